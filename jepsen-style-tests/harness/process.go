package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// StartMarker begins the line a Process writes to its log at each start,
// followed by the start's number: what a node logged since its last start
// is what follows the last marker.
const StartMarker = "=== harness: start #"

// Process is one node's server process. It can be killed, paused and
// restarted any number of times; every incarnation appends to the same log
// file, separated by a marker line, so a report shows what each node said
// before and after each fault. Every process started is killed if the test
// binary is interrupted (RegisterCleanup) or dies (SIGKILL on the parent's
// death).
type Process struct {
	// Namespace is the network namespace to run in; "" runs in the test
	// process's own namespace (loopback mode).
	Namespace string
	Bin       string
	Args      []string
	Env       []string
	LogPath   string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	exitErr error
	paused  bool
	starts  int
	unreg   func()
}

// Start launches a new incarnation. It fails if one is already running.
func (p *Process) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !isClosed(p.done) {
		return fmt.Errorf("process %s: already running (pid %d)", p.Bin, p.cmd.Process.Pid)
	}
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("process log: %w", err)
	}
	p.starts++
	fmt.Fprintf(logf, StartMarker+"%d at %s: %s %v\n", p.starts, time.Now().UTC().Format(time.RFC3339Nano), p.Bin, p.Args)
	var cmd *exec.Cmd
	if p.Namespace != "" {
		// nsenter enters the network namespace and then execs the binary,
		// so the PID we hold is the server's own and kill -9 reaches it.
		// Not ip netns exec: it also makes a mount namespace per process,
		// whose copies of the other nodes' lazyfs mounts would keep those
		// mounts alive after their unmount (a power failure then hangs).
		cmd = exec.Command("nsenter", append([]string{"--net=/run/netns/" + p.Namespace, "--", p.Bin}, p.Args...)...)
	} else {
		cmd = exec.Command(p.Bin, p.Args...)
	}
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Pdeathsig kills the node if the test binary itself dies without
	// running its cleanups (SIGKILL, a crash); Setpgid keeps a terminal's
	// ^C from reaching the nodes before our handler heals and stops them.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.Bin, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.paused, p.exitErr = cmd, done, false, nil
	if p.unreg == nil {
		p.unreg = RegisterCleanup(func() { p.Kill() })
	}
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(logf, "=== harness: exit of start #%d at %s: %v\n", p.starts, time.Now().UTC().Format(time.RFC3339Nano), err)
		logf.Close()
		p.mu.Lock()
		p.exitErr = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

// PID returns the running incarnation's PID, or 0.
func (p *Process) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || isClosed(p.done) {
		return 0
	}
	return p.cmd.Process.Pid
}

// Running reports whether an incarnation is alive (paused counts as alive).
func (p *Process) Running() bool { return p.PID() != 0 }

// Paused reports whether the process is stopped by SIGSTOP.
func (p *Process) Paused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused
}

// Kill sends SIGKILL and waits for the process to be reaped. Killing a
// process that is not running is a no-op.
func (p *Process) Kill() error {
	return p.signalAndWait(syscall.SIGKILL, 10*time.Second)
}

// Terminate asks the process to shut down (SIGTERM, after SIGCONT if it was
// paused) and kills it when it has not exited within grace.
func (p *Process) Terminate(grace time.Duration) error {
	_ = p.signal(syscall.SIGCONT)
	if err := p.signalAndWait(syscall.SIGTERM, grace); err == nil {
		return nil
	}
	return p.Kill()
}

// Pause stops the process with SIGSTOP.
func (p *Process) Pause() error {
	if err := p.signal(syscall.SIGSTOP); err != nil {
		return err
	}
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
	return nil
}

// Resume continues a paused process with SIGCONT.
func (p *Process) Resume() error {
	if err := p.signal(syscall.SIGCONT); err != nil {
		return err
	}
	p.mu.Lock()
	p.paused = false
	p.mu.Unlock()
	return nil
}

// Wait waits up to d for the running incarnation to exit and returns its
// exit error.
func (p *Process) Wait(d time.Duration) error {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.exitErr
	case <-time.After(d):
		return fmt.Errorf("process %s still running after %s", p.Bin, d)
	}
}

// Close kills the process and drops it from the interrupt cleanups.
func (p *Process) Close() error {
	err := p.Kill()
	p.mu.Lock()
	unreg := p.unreg
	p.unreg = nil
	p.mu.Unlock()
	if unreg != nil {
		unreg()
	}
	return err
}

var errNotRunning = errors.New("process not running")

func (p *Process) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || isClosed(p.done) {
		return errNotRunning
	}
	return p.cmd.Process.Signal(sig)
}

func (p *Process) signalAndWait(sig syscall.Signal, d time.Duration) error {
	p.mu.Lock()
	if p.cmd == nil || isClosed(p.done) {
		p.mu.Unlock()
		return nil
	}
	err := p.cmd.Process.Signal(sig)
	done := p.done
	p.mu.Unlock()
	if err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-done:
		p.mu.Lock()
		p.paused = false
		p.mu.Unlock()
		return nil
	case <-time.After(d):
		return fmt.Errorf("process %s did not exit within %s of %v", p.Bin, d, sig)
	}
}

func isClosed(ch chan struct{}) bool {
	if ch == nil {
		return true
	}
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
