package harness

import (
	"os"
	"os/signal"
	"sort"
	"sync"
	"syscall"
)

// The cleanup registry makes sure what a test set up outside its process
// (node processes, network namespaces, mounts) goes away when the test
// binary is interrupted: t.Cleanup does not run on SIGINT, so the
// first registration installs a handler that runs every pending cleanup and
// then exits with the conventional 128+signal status.
var cleanups = struct {
	sync.Mutex
	next      int
	fns       map[int]func()
	installed bool
}{fns: map[int]func(){}}

// RegisterCleanup adds fn to the interrupt cleanups and returns a function
// that removes it again (call it once fn has run normally).
func RegisterCleanup(fn func()) (unregister func()) {
	cleanups.Lock()
	defer cleanups.Unlock()
	if !cleanups.installed {
		cleanups.installed = true
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
		go func() {
			sig := <-ch
			RunCleanups()
			code := 130
			if s, ok := sig.(syscall.Signal); ok {
				code = 128 + int(s)
			}
			os.Exit(code)
		}()
	}
	id := cleanups.next
	cleanups.next++
	cleanups.fns[id] = fn
	return func() {
		cleanups.Lock()
		delete(cleanups.fns, id)
		cleanups.Unlock()
	}
}

// RunCleanups runs every registered cleanup, newest first (processes were
// registered after the network they run in).
func RunCleanups() {
	cleanups.Lock()
	var ids []int
	for id := range cleanups.fns {
		ids = append(ids, id)
	}
	fns := cleanups.fns
	cleanups.fns = map[int]func(){}
	cleanups.Unlock()
	sort.Ints(ids)
	for i := len(ids) - 1; i >= 0; i-- {
		fns[ids[i]]()
	}
}
