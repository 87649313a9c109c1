package lazyfs

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// bitesAcks is how many acknowledgements TestPowerFailureBites reads
// before it kills the writer.
const bitesAcks = 250

// writerEnv switches the test binary into the writer program of
// TestPowerFailureBites: LAZYFS_WRITER=<file>,<ack-before-sync|sync-before-ack>.
const writerEnv = "LAZYFS_WRITER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(writerEnv); spec != "" {
		os.Exit(runWriter(spec))
	}
	if spec := os.Getenv(bboltEnv); spec != "" {
		if err := runBbolt(spec); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runWriter appends numbered records to a file and prints "ack N" for each:
// before fsyncing it (the bug: it syncs only every 100 records, like a
// writer with a periodic flush) or after (the contract). It runs until it
// is killed.
func runWriter(spec string) int {
	path, mode, _ := strings.Cut(spec, ",")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for i := 0; ; i++ {
		if _, err := fmt.Fprintf(f, "%08d\n", i); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if mode == "ack-before-sync" {
			fmt.Printf("ack %d\n", i)
			if i == bitesAcks-1 {
				// Wait for the kill with records 200 to 249 acknowledged
				// and not synced. Running on, the writer could reach its
				// next sync (after record 299) before the kill landed,
				// and then every record it had acknowledged was synced:
				// nothing to lose, and the test failed.
				select {}
			}
		}
		if i%100 == 99 || mode == "sync-before-ack" {
			if err := f.Sync(); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		if mode == "sync-before-ack" {
			fmt.Printf("ack %d\n", i)
		}
	}
}

// checkAcked returns the acknowledged records missing from log: the
// history checker of this proof, in miniature.
func checkAcked(acked []int, log []byte) (lost []int) {
	have := map[int]bool{}
	for _, line := range strings.Split(string(log), "\n") {
		if n, err := strconv.Atoi(line); err == nil && len(line) == 8 {
			have[n] = true
		}
	}
	for _, a := range acked {
		if !have[a] {
			lost = append(lost, a)
		}
	}
	return lost
}

// runWriterUntilKilled starts the writer on the mount, reads n acks, runs
// beforeKill (if any), kills it with SIGKILL mid-stream and returns every
// ack it printed.
func runWriterUntilKilled(t *testing.T, path, mode string, n int, beforeKill func()) []int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), writerEnv+"="+path+","+mode)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var acked []int
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		v, err := strconv.Atoi(strings.TrimPrefix(sc.Text(), "ack "))
		if err != nil {
			t.Fatalf("writer printed %q", sc.Text())
		}
		acked = append(acked, v)
		if len(acked) == n {
			if beforeKill != nil {
				beforeKill()
			}
			cmd.Process.Kill()
			break
		}
	}
	// Acks already in the pipe were printed before the kill: they count.
	for sc.Scan() {
		if v, err := strconv.Atoi(strings.TrimPrefix(sc.Text(), "ack ")); err == nil {
			acked = append(acked, v)
		}
	}
	cmd.Wait()
	if len(acked) < n {
		t.Fatalf("writer stopped after %d acks, want %d", len(acked), n)
	}
	return acked
}

// TestPowerFailureBites is the proof that the power-failure nemesis can
// catch a writer that acknowledges before fsync, and passes one that
// syncs first.
func TestPowerFailureBites(t *testing.T) {
	for _, tc := range []struct {
		mode     string
		wantLoss bool
	}{
		{"ack-before-sync", true},
		{"sync-before-ack", false},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			l := mountTemp(t)
			path := filepath.Join(l.Mountpoint(), "records")
			acked := runWriterUntilKilled(t, path, tc.mode, bitesAcks, nil)
			before, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if lost := checkAcked(acked, before); len(lost) != 0 {
				t.Fatalf("kill -9 alone lost %d acknowledged records: the page cache should have kept them", len(lost))
			}
			loss, err := l.PowerFailure(Drop, nil)
			if err != nil {
				t.Fatal(err)
			}
			after, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			lost := checkAcked(acked, after)
			t.Logf("%s: %d acknowledged, %d records on disk after the power failure, lost %d (%d unsynced bytes dropped)",
				tc.mode, len(acked), len(after)/9, len(lost), loss.Bytes)
			if tc.wantLoss && len(lost) == 0 {
				t.Fatal("the checker found no acknowledged record lost from a writer that acks before fsync: the nemesis does not bite")
			}
			if !tc.wantLoss && len(lost) != 0 {
				t.Fatalf("lost %d acknowledged records (first %d) although each was fsynced before its ack", len(lost), lost[0])
			}
		})
	}
}

// TestPowerFailureDuringFsync holds the writer's fsync, kills it and cuts
// the power: the record being synced (never acknowledged) is gone, every
// acknowledged one is there.
func TestPowerFailureDuringFsync(t *testing.T) {
	l := mountTemp(t)
	path := filepath.Join(l.Mountpoint(), "records")
	var caught bool
	acked := runWriterUntilKilled(t, path, "sync-before-ack", 50, func() {
		select {
		case <-l.HoldNextFsync():
			caught = true
		case <-time.After(10 * time.Second):
		}
	})
	if !caught {
		t.Fatal("the writer's next fsync was not held within 10 s")
	}
	loss, err := l.PowerFailure(Drop, nil)
	if err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if lost := checkAcked(acked, after); len(lost) != 0 {
		t.Fatalf("lost %d acknowledged records", len(lost))
	}
	if loss.Bytes != 9 || len(after) != 9*len(acked) {
		t.Fatalf("after a power failure during the fsync of one record: %d bytes dropped, file holds %d records for %d acks; want 9 bytes dropped and exactly the acked records",
			loss.Bytes, len(after)/9, len(acked))
	}
}
