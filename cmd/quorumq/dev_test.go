package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quorumq/quorumq/cluster"
)

// syncBuffer is a bytes.Buffer that a running command writes while the
// test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// devRun is a `quorumq dev` running in this process at base port base.
type devRun struct {
	out    *syncBuffer
	base   int
	done   chan error // its result, once it stops
	cancel func()     // stops it
}

// startDev runs `quorumq dev` at a random base port (another one when a
// port of its layout is taken) until it prints its "next:" hint, and
// stops it when the test ends.
func startDev(t *testing.T) *devRun {
	t.Helper()
	var (
		out     = &syncBuffer{}
		base    int
		done    chan error
		cancel  context.CancelFunc
		started bool
	)
	// A port of the layout may be taken by another process; another base
	// port then does.
	for attempt := 0; attempt < 5 && !started; attempt++ {
		base = 20000 + rand.IntN(cluster.MaxLocalBasePort(devNodes)-20000)
		out = &syncBuffer{}
		cmd := devCmd()
		cmd.SetArgs([]string{"--base-port", fmt.Sprint(base)})
		cmd.SetOut(out)
		cmd.SetErr(&bytes.Buffer{})
		var ctx context.Context
		ctx, cancel = context.WithCancel(context.Background())
		done = make(chan error, 1)
		go func() { done <- cmd.ExecuteContext(ctx) }()
		deadline := time.After(40 * time.Second)
	wait:
		for {
			select {
			case err := <-done:
				cancel()
				if err == nil || !strings.Contains(err.Error(), "address already in use") {
					t.Fatalf("quorumq dev --base-port %d = %v before it was ready; output:\n%s", base, err, out.String())
				}
				break wait
			case <-deadline:
				cancel()
				t.Fatalf("quorumq dev --base-port %d not ready within 40 s; output:\n%s", base, out.String())
			case <-time.After(50 * time.Millisecond):
				if strings.Contains(out.String(), "next:") {
					started = true
					break wait
				}
			}
		}
	}
	if !started {
		t.Fatal("no free base port in 5 attempts")
	}
	t.Cleanup(cancel)
	return &devRun{out: out, base: base, done: done, cancel: cancel}
}

// TestDevServesAtItsPortsAndStopsOnCancel runs `quorumq dev` at a base
// port, sends and receives through the addresses it prints, and stops it.
func TestDevServesAtItsPortsAndStopsOnCancel(t *testing.T) {
	d := startDev(t)
	out, base, done, cancel := d.out, d.base, d.done, d.cancel

	printed := out.String()
	var apis []string
	for i := 0; i < devNodes; i++ {
		api := fmt.Sprintf("127.0.0.1:%d", base+i)
		want := fmt.Sprintf("  n%d  api %s  raft 127.0.0.1:%d  gossip 127.0.0.1:%d  metrics http://127.0.0.1:%d/metrics  (",
			i+1, api, base+cluster.LocalRaftPortOffset+i, base+cluster.LocalGossipPortOffset+i, base+cluster.LocalAdminPortOffset+i)
		if !strings.Contains(printed, want) {
			t.Fatalf("quorumq dev printed:\n%s\nwant a line starting %q", printed, want)
		}
		apis = append(apis, api)
	}
	if strings.Count(printed, "(leader)") != 1 {
		t.Fatalf("quorumq dev printed:\n%s\nwant exactly one leader", printed)
	}
	addr := strings.Join(apis, ",")
	if !strings.Contains(printed, "`quorumq send --addr "+addr+" demo hello`") {
		t.Fatalf("quorumq dev printed:\n%s\nwant the send hint with --addr %s", printed, addr)
	}

	mustRun(t, sendCmd(), addr, "", "demo", "hello")
	// The console the banner names shows the queue, without a login (the
	// dev cluster has no tokens).
	console := fmt.Sprintf("http://127.0.0.1:%d/console/", base+cluster.LocalAdminPortOffset)
	if !strings.Contains(printed, "console: "+console) {
		t.Fatalf("quorumq dev printed:\n%s\nwant the console URL %s", printed, console)
	}
	resp, err := http.Get(console)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), `<tr data-queue="demo"`) {
		t.Fatalf("GET %s: %d, want 200 listing queue demo:\n%.1500s", console, resp.StatusCode, page)
	}
	if got := mustRun(t, recvCmd(), addr, "", "demo", "--ack"); !strings.Contains(got, "hello") {
		t.Fatalf("recv from the dev cluster printed %q; want hello", got)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("quorumq dev after cancel = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("quorumq dev did not stop within 30 s of cancel")
	}
	if !strings.HasSuffix(out.String(), "stopping...\nstopped\n") {
		t.Fatalf("quorumq dev printed:\n%s\nwant it to end with stopping... and stopped", out.String())
	}
}

func TestDevRefusesABasePortItsLayoutOverflows(t *testing.T) {
	cmd := devCmd()
	cmd.SetArgs([]string{"--base-port", "65134"})
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	err := cmd.Execute()
	if want := "--base-port 65134: want 1..65133 so that base+402 stays a valid port"; err == nil || err.Error() != want {
		t.Fatalf("quorumq dev --base-port 65134 = %v; want %q", err, want)
	}
}
