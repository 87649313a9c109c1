// Package harness holds what every test that runs quorumq as separate
// processes needs, once: the built binary and free loopback ports. The
// fault suite (package jepsen), the lazyfs power-cut tests, the server
// command's tests and the deployment test all use it, so a fix to either
// (a port handed out twice, a build flag) reaches them all.
package harness

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
)

// FreePorts returns n distinct TCP ports that were free on loopback. Every
// listener stays open until all n are chosen, so the kernel cannot hand
// the same port out twice; they are closed on return, so another process
// may still take one before the caller binds it, and the server that
// fails to bind then says so.
func FreePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free ports: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// BuildBinary builds the quorumq command into the file out. env is added
// to the environment of go build (e.g. "CGO_ENABLED=0") and flags to its
// arguments (e.g. "-tags", "fakeclock"). It names the command by import
// path, so it works from any directory of the module, as a test's is.
func BuildBinary(out string, env []string, flags ...string) error {
	args := append([]string{"build"}, flags...)
	args = append(args, "-o", out, "github.com/quorumq/quorumq/cmd/quorumq")
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}
