/**
 * Tar archives as the engine checks them on the way: the header codec
 * (header.ts), the gating scanner that counts entries and holds each header
 * back until a policy accepts it (scanner.ts), and the restore's policy that
 * keeps every entry inside the extraction root (policy.ts).
 */
export {
  ArchiveRejectedError,
  type EntryPolicy,
  type EntryType,
  type SkipKind,
  type TarEntry,
} from './header';
export { TarScanner } from './scanner';
export { confinedEntryPolicy, createEntryPolicy } from './policy';
