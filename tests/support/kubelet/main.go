// Command test-kubelet is the smallest kubelet that lets a real kube-apiserver serve
// `pods/exec` for tests: it serves /exec/{namespace}/{pod}/{container} with the kubelet's
// own streaming code (k8s.io/cri-streaming's remotecommand.ServeExec, SPDY and websocket)
// and runs the command on this host, as if every container were the host.
//
// Like a container runtime it closes the command's stdin when the client's stdin ends, reports
// the real exit status (a command killed by signal N exits 128+N, as containerd reports it),
// and does not kill the command when the connection drops: the command meets EPIPE on its
// next write, or EOF on stdin.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

type hostExecutor struct{}

func (hostExecutor) ExecInContainer(_ context.Context, pod, _ string, container string, cmd []string,
	in io.Reader, out, errOut io.WriteCloser, _ bool, _ <-chan remotecommand.TerminalSize, _ time.Duration) error {
	if len(cmd) == 0 {
		return errors.New("empty command")
	}
	c := exec.Command(cmd[0], cmd[1:]...)
	if out != nil {
		c.Stdout = out
	}
	if errOut != nil {
		c.Stderr = errOut
	}
	var stdin io.WriteCloser
	if in != nil {
		var err error
		if stdin, err = c.StdinPipe(); err != nil {
			return err
		}
	}
	if err := c.Start(); err != nil {
		// What a runtime reports when the executable is missing: exit status 126/127 with a message.
		if errOut != nil {
			fmt.Fprintf(errOut, "test-kubelet: %v\n", err)
		}
		return utilexec.CodeExitError{Err: err, Code: 127}
	}
	log.Printf("exec %s/%s pid %d: %q", pod, container, c.Process.Pid, cmd)
	if stdin != nil {
		go func() {
			// EOF from the client (a v5 CLOSE frame, or the SPDY stream's half-close) ends the
			// copy: close the pipe so the command sees EOF. Errors (EPIPE once it exits) are moot.
			_, _ = io.Copy(stdin, in)
			_ = stdin.Close()
		}()
	}
	err := c.Wait()
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code := exitErr.ExitCode()
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		log.Printf("exec pid %d: exit %d", c.Process.Pid, code)
		return utilexec.CodeExitError{Err: err, Code: code}
	}
	log.Printf("exec pid %d: done (%v)", c.Process.Pid, err)
	return err
}

func serveExec(w http.ResponseWriter, req *http.Request) {
	// /exec/{namespace}/{pod}/{container}, as the API server asks the kubelet.
	parts := strings.Split(strings.TrimPrefix(req.URL.Path, "/exec/"), "/")
	if len(parts) != 3 {
		http.NotFound(w, req)
		return
	}
	opts, err := remotecommand.NewOptions(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cmd := req.URL.Query()["command"]
	remotecommand.ServeExec(w, req, hostExecutor{}, parts[0]+"/"+parts[1], "", parts[2], cmd, opts,
		4*time.Hour, remotecommand.DefaultStreamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func main() {
	addr := flag.String("address", "127.0.0.1:10250", "address to serve on")
	certFile := flag.String("tls-cert-file", "", "serving certificate (PEM)")
	keyFile := flag.String("tls-private-key-file", "", "serving key (PEM)")
	flag.Parse()
	if *certFile == "" || *keyFile == "" {
		log.Fatal("--tls-cert-file and --tls-private-key-file are required")
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/exec/", serveExec)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	server := &http.Server{
		Addr:      *addr,
		Handler:   mux,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12},
		ErrorLog:  log.New(os.Stderr, "http: ", log.LstdFlags),
	}
	log.Printf("test-kubelet serving on https://%s", *addr)
	log.Fatal(server.ListenAndServeTLS(*certFile, *keyFile))
}
