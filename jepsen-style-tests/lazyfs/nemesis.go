package lazyfs

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// Target is one node as the power nemesis sees it: its mount and how to
// kill it (SIGKILL and wait for the exit) and start it again on the same
// mount.
type Target struct {
	Name  string
	FS    *FS
	Kill  func() error
	Start func() error
	// Hold, when set, narrows PowerFailMidFsync to the fsync of a file it
	// accepts (path relative to the backing directory), e.g. a snapshot.
	Hold func(rel string) bool
}

// PowerFail cuts the power of targets at the same moment: all are killed
// concurrently, then each mount loses its unsynced writes (mode Drop or
// Torn), then each is started again. It returns what each mount lost, by
// target name. One node, a minority and the whole cluster are the same
// call with one, some or all targets.
func PowerFail(targets []Target, mode Mode, rng *rand.Rand) (map[string]Loss, error) {
	if len(targets) == 0 {
		return nil, errors.New("lazyfs: power failure of no targets: want at least one")
	}
	return powerFail(targets, mode, rng)
}

// PowerFailMidFsync is PowerFail at the worst moment: it arms every
// target's mount with HoldNextFsync (HoldNextFsyncOf(t.Hold)), waits
// until each has a process blocked in fsync of unsynced data or until wait
// has passed, and then
// cuts the power of all targets at once. caught names the targets whose
// power failed during an fsync; their unsynced data is certainly lost. A
// node that wrote nothing within wait fails in whatever state it is in.
func PowerFailMidFsync(targets []Target, mode Mode, rng *rand.Rand, wait time.Duration) (losses map[string]Loss, caught []string, err error) {
	if len(targets) == 0 {
		return nil, nil, errors.New("lazyfs: power failure of no targets: want at least one")
	}
	if wait <= 0 {
		return nil, nil, fmt.Errorf("lazyfs: power failure mid-fsync: wait is %v, want > 0", wait)
	}
	held := make([]<-chan struct{}, len(targets))
	for i, t := range targets {
		held[i] = t.FS.HoldNextFsyncOf(t.Hold)
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	expired := false
	for i, t := range targets {
		if !expired {
			select {
			case <-held[i]:
			case <-deadline.C:
				expired = true
			}
		}
		select {
		case <-held[i]:
			caught = append(caught, t.Name)
		default:
		}
	}
	losses, err = powerFail(targets, mode, rng)
	return losses, caught, err
}

func powerFail(targets []Target, mode Mode, rng *rand.Rand) (map[string]Loss, error) {
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := t.Kill(); err != nil {
				errs[i] = fmt.Errorf("kill %s: %w", t.Name, err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	losses := make(map[string]Loss, len(targets))
	for _, t := range targets {
		loss, err := t.FS.PowerFailure(mode, rng)
		if err != nil {
			return losses, fmt.Errorf("power failure of %s: %w", t.Name, err)
		}
		losses[t.Name] = loss
	}
	for _, t := range targets {
		if err := t.Start(); err != nil {
			return losses, fmt.Errorf("restart %s after its power failure: %w", t.Name, err)
		}
	}
	return losses, nil
}
