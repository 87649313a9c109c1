//go:build fakeclock

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/quorumq/quorumq/cluster"
)

// The fault suite (jepsen-style-tests) builds the server with -tags
// fakeclock and moves each server's wall clock through a file, so a clock
// jump hits one process and not the machine. The file holds one line:
//
//	offset <duration>             the wall clock reads <duration> ahead (negative: behind)
//	strobe <duration> <period>    it reads +<duration> and -<duration> in turn, each for <period>
//
// A missing or empty file is offset 0. The file is read every
// fakeClockPoll; write it atomically (rename).
const fakeClockPoll = 10 * time.Millisecond

// clockSpec is one reading of the clock file.
type clockSpec struct {
	offset, period time.Duration // period 0: a fixed offset
}

// at is the offset the spec gives at real time now.
func (s clockSpec) at(now time.Time) time.Duration {
	if s.period == 0 || (now.UnixNano()/int64(s.period))%2 == 0 {
		return s.offset
	}
	return -s.offset
}

func parseClockSpec(text string) (clockSpec, error) {
	f := strings.Fields(text)
	switch {
	case len(f) == 0:
		return clockSpec{}, nil
	case f[0] == "offset" && len(f) == 2:
		d, err := time.ParseDuration(f[1])
		if err != nil {
			return clockSpec{}, fmt.Errorf("offset %q: %w", f[1], err)
		}
		return clockSpec{offset: d}, nil
	case f[0] == "strobe" && len(f) == 3:
		d, err := time.ParseDuration(f[1])
		if err != nil {
			return clockSpec{}, fmt.Errorf("strobe offset %q: %w", f[1], err)
		}
		p, err := time.ParseDuration(f[2])
		if err != nil || p < time.Millisecond {
			return clockSpec{}, fmt.Errorf("strobe period %q: want a duration of at least 1ms", f[2])
		}
		return clockSpec{offset: d, period: p}, nil
	}
	return clockSpec{}, fmt.Errorf("%q: want \"offset <duration>\" or \"strobe <duration> <period>\"", strings.TrimSpace(text))
}

func readClockSpec(path string) (clockSpec, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return clockSpec{}, nil
	}
	if err != nil {
		return clockSpec{}, err
	}
	return parseClockSpec(string(b))
}

// fakeClock gives cfg a wall clock moved by --fake-clock-file, and the
// old wall-clock stamping with --fake-clock-wall-stamps.
func (f *serverFlags) fakeClock(ctx context.Context, cfg *cluster.Config) error {
	if f.fakeClockFile == "" {
		if f.wallClockStamps {
			return errors.New("--fake-clock-wall-stamps needs --fake-clock-file")
		}
		return nil
	}
	spec, err := readClockSpec(f.fakeClockFile)
	if err != nil {
		return fmt.Errorf("--fake-clock-file %s: %w", f.fakeClockFile, err)
	}
	clk := &cluster.OffsetClock{}
	clk.Set(spec.at(time.Now()))
	cfg.Clock = clk
	cfg.WallClockStamps = f.wallClockStamps
	log := cfg.Logger.With("fake_clock_file", f.fakeClockFile)
	log.Warn("test build: the wall clock is moved by a file", "wall_clock_stamps", f.wallClockStamps)
	go func() {
		t := time.NewTicker(fakeClockPoll)
		defer t.Stop()
		var bad string
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			s, err := readClockSpec(f.fakeClockFile)
			if err != nil {
				if err.Error() != bad {
					bad = err.Error()
					log.Error("fake clock file unreadable; keeping the last offset", "err", err)
				}
				continue
			}
			bad = ""
			if s != spec {
				log.Info("fake clock", "offset", s.offset, "strobe_period", s.period)
				spec = s
			}
			clk.Set(spec.at(time.Now()))
		}
	}()
	return nil
}
