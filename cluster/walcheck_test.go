package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

// segmentFiles lists the wal segment files of a data dir.
func segmentFiles(t *testing.T, dataDir string) []string {
	t.Helper()
	segs, err := filepath.Glob(filepath.Join(dataDir, walDirName, "*.wal"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("no segment file in %s (err %v)", filepath.Join(dataDir, walDirName), err)
	}
	return segs
}

// TestTruncatedWALFilesRefuseToStart cuts a stopped follower's tail
// segment to between a quarter and a half of its size (as the fault
// suite's corruption does), and in another run its meta DB: the node
// refuses to start naming the file.
func TestTruncatedWALFilesRefuseToStart(t *testing.T) {
	for _, victim := range []string{"segment", "meta DB"} {
		t.Run(victim, func(t *testing.T) {
			c := StartTestCluster(t, 3)
			li := c.Index(c.Leader(t))
			for i := range 30 {
				enqueue(t, c, li, "q", fmt.Sprintf("m%d", i))
			}
			c.WaitReplicated(t)
			fi := follower(t, c)
			cfg := c.configs[fi]
			c.Kill(fi)
			path := filepath.Join(cfg.DataDir, walDirName, walMetaFile)
			if victim == "segment" {
				segs := segmentFiles(t, cfg.DataDir)
				path = segs[len(segs)-1]
			}
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			size := st.Size()/4 + rand.Int64N(st.Size()/4+1)
			if err := os.Truncate(path, size); err != nil {
				t.Fatal(err)
			}
			_, err = Start(context.Background(), cfg)
			if err == nil {
				t.Fatalf("node started on a %s cut from %d to %d bytes", victim, st.Size(), size)
			}
			if !errors.Is(err, ErrDataDir) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "truncated") {
				t.Fatalf("start with a truncated %s: %q; want ErrDataDir naming %s as truncated", victim, err, path)
			}
			if victim == "segment" && !strings.Contains(err.Error(), "log entries from 1") {
				t.Fatalf("start with a truncated segment: %q; want the entries it holds named", err)
			}
			t.Logf("refused: %v", err)
		})
	}
}

// TestRandomBitFlipsInWALSegment flips random bits in the written part of
// a closed wal's segment file and runs the start-up checks on each copy.
// Every outcome is a clean pass with every entry intact, ErrDataDir naming
// the segment file, or the last batch dropped, as raft-wal drops a batch
// whose write a crash tore (the one damage its format cannot tell from a
// torn write); never a wrong entry.
func TestRandomBitFlipsInWALSegment(t *testing.T) {
	base := t.TempDir()
	orig := filepath.Join(base, "orig")
	s, err := openLogStore(orig, LogStoreWAL, 0, testLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	logs := commandLogs(t, 1, 300, 1)
	logs[50].Type, logs[50].Data = raft.LogNoop, nil // entries the command checksum does not cover
	logs[150].Type, logs[150].Data = raft.LogBarrier, nil
	for i := 0; i < len(logs); i += 10 {
		if err := s.StoreLogs(logs[i : i+10]); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	segs := segmentFiles(t, orig)
	if len(segs) != 1 {
		t.Fatalf("%d segment files, want 1", len(segs))
	}
	content, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	used := len(bytes.TrimRight(content, "\x00"))
	outcomes := map[string]int{}
	examples := map[string]string{}
	rng := rand.New(rand.NewPCG(7, 7))
	for round := range 40 {
		dir := filepath.Join(base, fmt.Sprintf("r%d", round))
		copyDir(t, orig, dir)
		seg := filepath.Join(dir, walDirName, filepath.Base(segs[0]))
		data := append([]byte(nil), content...)
		for range 4 {
			data[rng.IntN(used)] ^= 1 << rng.IntN(8)
		}
		if err := os.WriteFile(seg, data, 0o600); err != nil {
			t.Fatal(err)
		}
		kind, err := checkWALCopy(dir, logs)
		switch {
		case err == nil:
			outcomes[kind]++
		case errors.Is(err, ErrDataDir) && strings.Contains(err.Error(), seg):
			outcomes[errKind(err)]++
			examples[errKind(err)] = err.Error()
		default:
			t.Fatalf("round %d: %v; want ErrDataDir naming %s", round, err, seg)
		}
	}
	t.Logf("40 copies with 4 random bit flips each: %v", outcomes)
	for k, e := range examples {
		t.Logf("%s, e.g. %s", k, e)
	}
}

// checkWALCopy opens the wal of dataDir as a node does and reads every
// entry through the checks, then compares each with want. A clean pass
// is "intact", or "last batch dropped" when exactly the last batch of
// ten is missing.
func checkWALCopy(dataDir string, want []*raft.Log) (string, error) {
	s, err := openLogStore(dataDir, LogStoreWAL, 0, testLogger(), nil)
	if err != nil {
		return "", err
	}
	defer s.Close()
	if err := verifyLog(s.LogStore, s.path, 0, s.fileOf); err != nil {
		return "", err
	}
	last, err := s.LastIndex()
	if err != nil {
		return "", err
	}
	kind := "intact"
	if last == uint64(len(want))-10 {
		kind = "last batch dropped"
	} else if last != uint64(len(want)) {
		return "", fmt.Errorf("the log ends at %d after passing the checks, want %d", last, len(want))
	}
	for _, w := range want[:last] {
		var l raft.Log
		if err := s.GetLog(w.Index, &l); err != nil || l.Index != w.Index || l.Term != w.Term || l.Type != w.Type || !bytes.Equal(l.Data, w.Data) {
			return "", fmt.Errorf("entry %d passed the checks but differs from what was written (err %v)", w.Index, err)
		}
	}
	return kind, nil
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.CopyFS(to, os.DirFS(from)); err != nil {
		t.Fatal(err)
	}
}

// TestWALDropsATornLastBatch: the last batch of the tail segment failing
// its checksum is what a crash in the middle of its write leaves, and the
// node starts without it (the batch was never acknowledged if the write
// was torn; raft brings its entries back from the leader otherwise). The
// same damage one batch earlier is refused.
func TestWALDropsATornLastBatch(t *testing.T) {
	for _, c := range []struct {
		name    string
		victim  uint64 // an entry of the batch to damage
		refused bool
	}{{"last batch", 25, false}, {"batch before it", 15, true}} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := openLogStore(dir, LogStoreWAL, 0, testLogger(), nil)
			if err != nil {
				t.Fatal(err)
			}
			logs := commandLogs(t, 1, 30, 1)
			for i := 0; i < len(logs); i += 10 {
				if err := s.StoreLogs(logs[i : i+10]); err != nil {
					t.Fatal(err)
				}
			}
			s.Close()
			seg := segmentFiles(t, dir)[0]
			if n := flipMiddleBits(t, seg, fmt.Appendf(nil, "entry-%04d-term-1", c.victim)); n != 1 {
				t.Fatalf("flipped %d copies of entry %d", n, c.victim)
			}
			s, err = openLogStore(dir, LogStoreWAL, 0, testLogger(), nil)
			if c.refused {
				if !errors.Is(err, ErrDataDir) || !strings.Contains(err.Error(), seg) || !strings.Contains(err.Error(), "log entries 11 to 20") {
					t.Fatalf("open: %v; want ErrDataDir naming %s and entries 11 to 20", err, seg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if last, _ := s.LastIndex(); last != 20 {
				t.Fatalf("last index %d after the last batch failed its checksum, want 20", last)
			}
		})
	}
}
