//go:build !fakeclock

package main

import (
	"context"
	"errors"

	"github.com/quorumq/quorumq/cluster"
)

// fakeClock refuses the fault suite's clock options: a release server
// reads the machine's clock and stamps cluster time, always.
func (f *serverFlags) fakeClock(_ context.Context, _ *cluster.Config) error {
	if f.fakeClockFile != "" || f.wallClockStamps {
		return errors.New("--fake-clock-file and --fake-clock-wall-stamps are test-only options: this binary was built without -tags fakeclock (the fault suite builds its own)")
	}
	return nil
}
