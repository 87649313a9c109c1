package jepsen

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/quorumq/quorumq/jepsen-style-tests/harness"
)

// The test binary doubles as a tiny echo server and dialer so the network
// and process tests need no tools beyond ip and nft: they run it inside the
// namespaces with QJ_HELPER set.
func TestMain(m *testing.M) {
	switch os.Getenv("QJ_HELPER") {
	case "echo":
		os.Exit(helperEcho(os.Getenv("QJ_ADDR")))
	case "dial":
		os.Exit(helperDial(os.Getenv("QJ_ADDR")))
	case "hold":
		os.Exit(helperHold())
	}
	code := m.Run()
	harness.RunCleanups()
	os.Exit(code)
}

func helperEcho(addr string) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		return 2
	}
	fmt.Fprintln(os.Stderr, "echo: listening on", addr)
	for {
		c, err := ln.Accept()
		if err != nil {
			return 2
		}
		go func() {
			defer c.Close()
			line, err := bufio.NewReader(c).ReadString('\n')
			if err == nil {
				fmt.Fprint(c, line)
			}
		}()
	}
}

func helperDial(addr string) int {
	if err := echoOnce(addr, time.Second); err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		return 1
	}
	return 0
}

// echoOnce connects to an echo helper and checks it answers.
func echoOnce(addr string, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintln(c, "ping"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "ping\n" {
		return fmt.Errorf("echo answered %q", line)
	}
	return nil
}

// helperHold builds a network with a node process in it, reports their
// names on stdout and waits to be interrupted: the interrupt test checks
// that the signal handler removes both.
func helperHold() int {
	n, err := NewNetwork("hold", []string{"n1"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "hold:", err)
		return 2
	}
	nd, _ := n.Node("n1")
	dir, err := os.MkdirTemp("", "quorumq-jepsen-hold-")
	if err != nil {
		return 2
	}
	p := &harness.Process{Namespace: nd.Namespace, Bin: os.Args[0], Env: []string{"QJ_HELPER=echo", "QJ_ADDR=" + nd.IP.String() + ":7999"},
		LogPath: dir + "/echo.log"}
	if err := p.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "hold:", err)
		return 2
	}
	registerCleanup(func() { os.RemoveAll(dir) })
	fmt.Printf("ready %s %s %d %s\n", nd.Namespace, n.switchNS, p.PID(), dir)
	select {}
}
