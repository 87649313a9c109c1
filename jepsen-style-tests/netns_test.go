package jepsen

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quorumq/quorumq/jepsen-style-tests/harness"
)

func requireNetns(t *testing.T) {
	t.Helper()
	if ok, why := CanUseNetns(); !ok {
		t.Skipf("skipping: network namespaces unavailable (%s); partition cases need root with ip and nft", why)
	}
}

// dialFrom runs the dial helper inside node from's namespace.
func dialFrom(n *Network, from, addr string) error {
	nd, _ := n.Node(from)
	cmd := exec.Command("ip", "netns", "exec", nd.Namespace, os.Args[0])
	cmd.Env = append(os.Environ(), "QJ_HELPER=dial", "QJ_ADDR="+addr)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return &dialError{strings.TrimSpace(string(out))}
	}
	return nil
}

type dialError struct{ msg string }

func (e *dialError) Error() string { return e.msg }

func TestNetworkPartitionsAndHeals(t *testing.T) {
	requireNetns(t)
	ids := []string{"n1", "n2", "n3"}
	n, err := NewNetwork(t.Name(), ids)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })

	// An echo server in every node namespace, run by the process manager.
	addrs := map[string]string{}
	for _, id := range ids {
		nd, _ := n.Node(id)
		addrs[id] = net.JoinHostPort(nd.IP.String(), "7999")
		p := &harness.Process{Namespace: nd.Namespace, Bin: os.Args[0], Env: []string{"QJ_HELPER=echo", "QJ_ADDR=" + addrs[id]},
			LogPath: filepath.Join(t.TempDir(), id+".log")}
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
	}
	reach := func(from, to string) bool {
		if from == "host" {
			return echoOnce(addrs[to], time.Second) == nil
		}
		return dialFrom(n, from, addrs[to]) == nil
	}
	expect := func(stage string, want map[[2]string]bool) {
		t.Helper()
		for pair, ok := range want {
			var got bool
			for i := 0; i < 20; i++ { // the echo servers may still be starting
				if got = reach(pair[0], pair[1]); got || !ok {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if got != ok {
				t.Errorf("%s: %s -> %s reachable=%v, want %v", stage, pair[0], pair[1], got, ok)
			}
		}
	}
	all := map[[2]string]bool{{"n1", "n2"}: true, {"n2", "n1"}: true, {"n1", "n3"}: true, {"n3", "n2"}: true,
		{"host", "n1"}: true, {"host", "n2"}: true, {"host", "n3"}: true}
	expect("before", all)

	// Symmetric: n1 | n2, n3 in touch with both.
	if err := n.Partition(Grudge{"n1": {"n2"}, "n2": {"n1"}}); err != nil {
		t.Fatal(err)
	}
	rules, _ := n.Rules("n1")
	if !strings.Contains(rules, "drop") {
		t.Fatalf("n1 has no drop rule after partition:\n%s", rules)
	}
	expect("partitioned", map[[2]string]bool{{"n1", "n2"}: false, {"n2", "n1"}: false, {"n1", "n3"}: true,
		{"n3", "n2"}: true, {"host", "n1"}: true, {"host", "n2"}: true})

	// One-way: n3 drops what n1 sends; n1 still hears n2.
	if err := n.Partition(Grudge{"n3": {"n1"}}); err != nil {
		t.Fatal(err)
	}
	expect("one-way", map[[2]string]bool{{"n1", "n3"}: false, {"n1", "n2"}: true, {"n2", "n1"}: true, {"host", "n3"}: true})

	if err := n.Heal(); err != nil {
		t.Fatal(err)
	}
	expect("healed", all)

	if err := n.Partition(Grudge{"n1": {"n9"}}); err == nil || !strings.Contains(err.Error(), "n9") {
		t.Fatalf("unknown node in grudge: err=%v, want one naming n9", err)
	}

	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	for _, nd := range n.Nodes() {
		if nsExists(nd.Namespace) {
			t.Errorf("namespace %s still exists after Close", nd.Namespace)
		}
	}
	if linkExists(n.hostLink) {
		t.Errorf("host link %s still exists after Close", n.hostLink)
	}
}

func TestProcessKillPauseRestart(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	log := filepath.Join(t.TempDir(), "echo.log")
	p := &harness.Process{Bin: os.Args[0], Env: []string{"QJ_HELPER=echo", "QJ_ADDR=" + addr}, LogPath: log}
	t.Cleanup(func() { p.Close() })
	waitEcho := func(stage string, want bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := echoOnce(addr, 300*time.Millisecond)
			if (err == nil) == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: echo ok=%v, want %v (err %v)", stage, err == nil, want, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	waitEcho("started", true)
	if err := p.Start(); err == nil {
		t.Fatal("second Start of a running process succeeded")
	}
	if err := p.Pause(); err != nil {
		t.Fatal(err)
	}
	waitEcho("paused", false)
	if err := p.Resume(); err != nil {
		t.Fatal(err)
	}
	waitEcho("resumed", true)
	pid := p.PID()
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if p.Running() || processAlive(pid) {
		t.Fatalf("pid %d alive after Kill", pid)
	}
	waitEcho("killed", false)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	waitEcho("restarted", true)
	if p.PID() == pid {
		t.Fatal("restart kept the old pid")
	}
	b, _ := os.ReadFile(log)
	if strings.Count(string(b), harness.StartMarker) != 2 || !strings.Contains(string(b), "listening on") {
		t.Fatalf("log does not record both incarnations:\n%s", b)
	}
}

func TestInterruptRemovesNamespacesAndProcesses(t *testing.T) {
	requireNetns(t)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "QJ_HELPER=hold")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var nodeNS, switchNS, dir string
	var pid int
	if _, err := fmt.Fscanf(out, "ready %s %s %d %s\n", &nodeNS, &switchNS, &pid, &dir); err != nil {
		t.Fatalf("helper did not report ready: %v", err)
	}
	if !nsExists(nodeNS) || !nsExists(switchNS) || !processAlive(pid) {
		t.Fatalf("helper's network or process missing before the interrupt: %s %s pid %d", nodeNS, switchNS, pid)
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 130 {
		t.Fatalf("helper exit after SIGINT: %v, want status 130", err)
	}
	for _, ns := range []string{nodeNS, switchNS} {
		if nsExists(ns) {
			t.Errorf("namespace %s left behind after SIGINT", ns)
		}
	}
	if processAlive(pid) {
		t.Errorf("node process %d left running after SIGINT", pid)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("directory %s left behind after SIGINT", dir)
	}
}

// Cases run side by side in one test process (long-partition runs beside
// the sequential cases), so the namespace probe must answer the same for
// every caller at once instead of racing on one probe name.
func TestCanUseNetnsFromManyGoroutinesAtOnce(t *testing.T) {
	requireNetns(t)
	const callers = 8
	whys := make(chan string, callers)
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			if ok, why := CanUseNetns(); !ok {
				whys <- why
			}
		})
	}
	wg.Wait()
	close(whys)
	for why := range whys {
		t.Errorf("concurrent CanUseNetns refused: %s", why)
	}
}
