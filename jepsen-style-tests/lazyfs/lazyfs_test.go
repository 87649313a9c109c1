package lazyfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
)

// mountTemp mounts a fresh backing directory, or skips the test with the
// reason lazyfs cannot run here.
func mountTemp(t *testing.T) *FS {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	dir := t.TempDir()
	backing, mnt := filepath.Join(dir, "backing"), filepath.Join(dir, "mnt")
	for _, d := range []string{backing, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	l, err := Mount(backing, mnt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
			syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	})
	return l
}

func writeFile(t *testing.T, path string, flag int, data string, sync bool) {
	t.Helper()
	f, err := os.OpenFile(path, flag, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func wantContent(t *testing.T, path, want string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("%s holds %q, want %q", filepath.Base(path), got, want)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != int64(len(want)) {
		t.Fatalf("%s: stat size %d, want %d", filepath.Base(path), st.Size(), len(want))
	}
}

func powerFailure(t *testing.T, l *FS) Loss {
	t.Helper()
	loss, err := l.PowerFailure(Drop, nil)
	if err != nil {
		t.Fatal(err)
	}
	return loss
}

func TestUnsyncedWritesAreLostSyncedSurvive(t *testing.T) {
	l := mountTemp(t)
	p := filepath.Join(l.Mountpoint(), "log")
	writeFile(t, p, os.O_CREATE|os.O_WRONLY, "durable", true)
	writeFile(t, p, os.O_WRONLY|os.O_APPEND, " volatile", false)
	wantContent(t, p, "durable volatile") // programs see their writes
	if b, _ := os.ReadFile(filepath.Join(l.Backing(), "log")); string(b) != "durable" {
		t.Fatalf("backing file holds %q before the power failure, want only the synced %q", b, "durable")
	}
	if files, n := l.Pending(); files != 1 || n != int64(len(" volatile")) {
		t.Fatalf("Pending() = %d files, %d bytes; want 1 file, %d bytes", files, n, len(" volatile"))
	}

	loss := powerFailure(t, l)
	wantContent(t, p, "durable")
	if loss.Files != 1 || loss.Bytes != int64(len(" volatile")) {
		t.Fatalf("loss %+v, want 1 file and %d bytes", loss, len(" volatile"))
	}
	// The mount works as before after the failure.
	writeFile(t, p, os.O_WRONLY|os.O_APPEND, " again", true)
	powerFailure(t, l)
	wantContent(t, p, "durable again")
}

func TestFdatasyncMakesDataDurable(t *testing.T) {
	l := mountTemp(t)
	p := filepath.Join(l.Mountpoint(), "f")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("payload"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Fdatasync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	f.Close()
	powerFailure(t, l)
	wantContent(t, p, "payload")
}

func TestOSyncWritesAreDurable(t *testing.T) {
	l := mountTemp(t)
	p := filepath.Join(l.Mountpoint(), "f")
	writeFile(t, p, os.O_CREATE|os.O_WRONLY|os.O_SYNC, "synchronous", false)
	powerFailure(t, l)
	wantContent(t, p, "synchronous")
}

func TestNewFileKeepsNameLosesData(t *testing.T) {
	l := mountTemp(t)
	p := filepath.Join(l.Mountpoint(), "new")
	writeFile(t, p, os.O_CREATE|os.O_WRONLY, "never synced", false)
	powerFailure(t, l)
	// Directory operations are durable at once, data is not.
	wantContent(t, p, "")
}

func TestTruncate(t *testing.T) {
	l := mountTemp(t)
	p := filepath.Join(l.Mountpoint(), "t")
	writeFile(t, p, os.O_CREATE|os.O_WRONLY, "0123456789", true)

	if err := os.Truncate(p, 3); err != nil {
		t.Fatal(err)
	}
	wantContent(t, p, "012")
	// Extending after a truncate reads zeros in the gap, not old bytes.
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("X"), 6); err != nil {
		t.Fatal(err)
	}
	f.Close()
	wantContent(t, p, "012\x00\x00\x00X")
	powerFailure(t, l)
	wantContent(t, p, "0123456789")

	// ftruncate + fsync is durable.
	f, err = os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(4); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	powerFailure(t, l)
	wantContent(t, p, "0123")

	// O_TRUNC is a pending truncate like any other.
	writeFile(t, p, os.O_WRONLY|os.O_TRUNC, "ab", false)
	wantContent(t, p, "ab")
	powerFailure(t, l)
	wantContent(t, p, "0123")
}

func TestRename(t *testing.T) {
	l := mountTemp(t)
	mnt := l.Mountpoint()
	// write, fsync, rename: the pattern of atomic file replacement.
	writeFile(t, filepath.Join(mnt, "a.tmp"), os.O_CREATE|os.O_WRONLY, "synced", true)
	if err := os.Rename(filepath.Join(mnt, "a.tmp"), filepath.Join(mnt, "a")); err != nil {
		t.Fatal(err)
	}
	// Pending data moves with the file.
	writeFile(t, filepath.Join(mnt, "b.tmp"), os.O_CREATE|os.O_WRONLY, "unsynced", false)
	if err := os.Rename(filepath.Join(mnt, "b.tmp"), filepath.Join(mnt, "b")); err != nil {
		t.Fatal(err)
	}
	wantContent(t, filepath.Join(mnt, "b"), "unsynced")
	// Replacing a file drops the replaced file's pending data with it.
	writeFile(t, filepath.Join(mnt, "c"), os.O_CREATE|os.O_WRONLY, "old", false)
	writeFile(t, filepath.Join(mnt, "c.tmp"), os.O_CREATE|os.O_WRONLY, "new", true)
	if err := os.Rename(filepath.Join(mnt, "c.tmp"), filepath.Join(mnt, "c")); err != nil {
		t.Fatal(err)
	}
	// close(2) returns before the kernel sends FUSE's RELEASE, and
	// lazyfs forgets an open file only at its last release: wait for it.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		files, _ := l.Pending()
		if files == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d files pending 5 s after the rename replaced one, want 1 (b)", files)
		}
	}

	powerFailure(t, l)
	wantContent(t, filepath.Join(mnt, "a"), "synced")
	wantContent(t, filepath.Join(mnt, "b"), "")
	wantContent(t, filepath.Join(mnt, "c"), "new")
	for _, gone := range []string{"a.tmp", "b.tmp", "c.tmp"} {
		if _, err := os.Stat(filepath.Join(mnt, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s after the power failure: %v, want it gone (renames are durable)", gone, err)
		}
	}
}

func TestUnlinkedOpenFileStaysReadable(t *testing.T) {
	l := mountTemp(t)
	p := filepath.Join(l.Mountpoint(), "u")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("pending"); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 7)
	if _, err := f.ReadAt(got, 0); err != nil || string(got) != "pending" {
		t.Fatalf("read of an unlinked open file: %q, %v; want %q", got, err, "pending")
	}
	f.Close()
	// The kernel sends the release after close returns.
	deadline := time.Now().Add(5 * time.Second)
	for files, _ := l.Pending(); files != 0; files, _ = l.Pending() {
		if time.Now().After(deadline) {
			t.Fatalf("%d files pending after the last close of an unlinked file, want 0", files)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTornWriteKeepsAPrefix(t *testing.T) {
	l := mountTemp(t)
	p := filepath.Join(l.Mountpoint(), "torn")
	writeFile(t, p, os.O_CREATE|os.O_WRONLY, "", true)
	partial := 0
	for seed := uint64(1); seed <= 8; seed++ {
		var all bytes.Buffer
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 100 {
			rec := fmt.Sprintf("record %04d %d\n", i, seed)
			all.WriteString(rec)
			if _, err := f.WriteString(rec); err != nil {
				t.Fatal(err)
			}
		}
		f.Close()
		loss, err := l.PowerFailure(Torn, rand.New(rand.NewPCG(seed, 0)))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(all.Bytes(), got) {
			t.Fatalf("seed %d: torn file is not a prefix of what was written:\n%q", seed, got)
		}
		if loss.KeptBytes != int64(len(got)) || loss.KeptBytes+loss.Bytes != int64(all.Len()) {
			t.Fatalf("seed %d: loss %+v does not add up: file has %d bytes, %d were written", seed, loss, len(got), all.Len())
		}
		if len(got) > 0 && len(got) < all.Len() {
			partial++
		}
	}
	if partial == 0 {
		t.Fatal("no seed kept a strict, non-empty prefix: Torn behaves like Drop or like sync")
	}
}

func TestPowerFailureRefusesABusyMount(t *testing.T) {
	l := mountTemp(t)
	l.busyWait = time.Second
	p := filepath.Join(l.Mountpoint(), "busy")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("open"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.PowerFailure(Drop, nil); !errors.Is(err, ErrBusy) {
		t.Fatalf("PowerFailure with a file open: %v, want ErrBusy", err)
	}
	// Nothing was lost by the refused attempt.
	wantContent(t, p, "open")
	f.Close()
	if _, err := l.PowerFailure(Torn, nil); err == nil {
		t.Fatal("Torn with a nil rng: no error")
	}
	if _, err := l.PowerFailure(Mode(7), nil); err == nil {
		t.Fatal("unknown mode: no error")
	}
}

// TestHoldNextFsyncOfHoldsOnlyMatchingFiles: with a filter, the fsync of
// another file completes (and is durable) while the matching file's fsync
// is held, and fails without making anything durable when released.
func TestHoldNextFsyncOfHoldsOnlyMatchingFiles(t *testing.T) {
	l := mountTemp(t)
	if err := os.Mkdir(filepath.Join(l.Mountpoint(), "snapshots"), 0o755); err != nil {
		t.Fatal(err)
	}
	held := l.HoldNextFsyncOf(func(rel string) bool { return strings.HasPrefix(rel, "snapshots/") })
	writeFile(t, filepath.Join(l.Mountpoint(), "log"), os.O_CREATE|os.O_WRONLY, "entry", true)
	select {
	case <-held:
		t.Fatal("the fsync of log was held; only snapshots/ should be")
	default:
	}
	f, err := os.Create(filepath.Join(l.Mountpoint(), "snapshots", "state.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("state"); err != nil {
		t.Fatal(err)
	}
	synced := make(chan error, 1)
	go func() { synced <- f.Sync() }()
	select {
	case <-held:
	case err := <-synced:
		t.Fatalf("the fsync of snapshots/state.bin completed (%v), want it held", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the fsync of snapshots/state.bin was not held within 10 s")
	}
	l.releaseHeld()
	if err := <-synced; err == nil {
		t.Fatal("a released held fsync succeeded, want an error")
	}
	for name, want := range map[string]string{"log": "entry", "snapshots/state.bin": ""} {
		got, err := os.ReadFile(filepath.Join(l.Backing(), name))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("backing %s holds %q, want %q", name, got, want)
		}
	}
}

func TestLyingFsyncMakesNothingDurable(t *testing.T) {
	l := mountTemp(t)
	p := filepath.Join(l.Mountpoint(), "f")
	writeFile(t, p, os.O_CREATE|os.O_WRONLY, "synced", true)
	l.LieAboutFsync(true)
	writeFile(t, p, os.O_WRONLY|os.O_APPEND, " lied-about", true)
	wantContent(t, p, "synced lied-about")
	powerFailure(t, l)
	wantContent(t, p, "synced")
	l.LieAboutFsync(false)
	writeFile(t, p, os.O_WRONLY|os.O_APPEND, " honest", true)
	powerFailure(t, l)
	wantContent(t, p, "synced honest")
}

func TestCleanUnmountKeepsEverything(t *testing.T) {
	l := mountTemp(t)
	writeFile(t, filepath.Join(l.Mountpoint(), "f"), os.O_CREATE|os.O_WRONLY, "flushed at shutdown", false)
	if err := l.Unmount(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(l.Backing(), "f"))
	if err != nil || string(b) != "flushed at shutdown" {
		t.Fatalf("backing file after a clean unmount: %q, %v", b, err)
	}
	if err := l.mount(); err != nil { // for the cleanup's Unmount
		t.Fatal(err)
	}
}

// bboltEnv switches the test binary into the bbolt program of
// TestBboltCommitsSurviveUnsyncedOnesDoNot: LAZYFS_BBOLT=<file>,<write|check>.
// bbolt runs in a child process because it reads through mmap: a page
// fault served by a FUSE server in the same Go process can deadlock with
// the garbage collector's stop-the-world.
const bboltEnv = "LAZYFS_BBOLT"

func bboltPut(db *bbolt.DB, from, to int) error {
	for i := from; i < to; i++ {
		err := db.Update(func(tx *bbolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("logs"))
			if err != nil {
				return err
			}
			return b.Put(fmt.Appendf(nil, "k%05d", i), bytes.Repeat([]byte{byte(i)}, 700))
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// runBbolt writes 200 synced and 200 NoSync commits, or checks the file
// and prints its key count.
func runBbolt(spec string) error {
	path, phase, _ := strings.Cut(spec, ",")
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	if phase == "write" {
		if err := bboltPut(db, 0, 200); err != nil {
			return err
		}
		// NoGrowSync too: otherwise bbolt fsyncs whenever it grows the
		// file, and that fsync rightly makes the NoSync commits before it
		// durable.
		db.NoSync, db.NoGrowSync = true, true
		if err := bboltPut(db, 200, 400); err != nil {
			return err
		}
	}
	return db.View(func(tx *bbolt.Tx) error {
		for err := range tx.Check() {
			return fmt.Errorf("bbolt check: %w", err)
		}
		b := tx.Bucket([]byte("logs"))
		if v := b.Get([]byte("k00199")); !bytes.Equal(v, bytes.Repeat([]byte{199}, 700)) {
			return fmt.Errorf("key k00199 holds %d bytes, want 700 bytes of c7", len(v))
		}
		fmt.Printf("keys %d\n", b.Stats().KeyN)
		return nil
	})
}

// TestBboltCommitsSurviveUnsyncedOnesDoNot runs bbolt (mmap reads, pwrite
// and fdatasync writes) on lazyfs: commits made with syncing survive a
// power failure, commits made with NoSync vanish, and the file passes
// bbolt's consistency check either way.
func TestBboltCommitsSurviveUnsyncedOnesDoNot(t *testing.T) {
	l := mountTemp(t)
	path := filepath.Join(l.Mountpoint(), "raft.db")
	run := func(phase string) string {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), bboltEnv+"="+path+","+phase)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("bbolt %s: %v\n%s", phase, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := run("write"); got != "keys 400" {
		t.Fatalf("before the power failure: %q, want keys 400", got)
	}
	loss := powerFailure(t, l)
	if loss.Bytes == 0 {
		t.Fatal("the NoSync commits left nothing pending")
	}
	if got := run("check"); got != "keys 200" {
		t.Fatalf("after the power failure: %q, want the 200 synced keys", got)
	}
}

// TestRaftSnapshotStore checks raft's FileSnapshotStore (write, fsync,
// rename of the directory, fsync of the parent) on lazyfs: a closed
// snapshot survives with its CRC intact, one still being written does not
// appear.
func TestRaftSnapshotStore(t *testing.T) {
	l := mountTemp(t)
	dir := filepath.Join(l.Mountpoint(), "node")
	store, err := raft.NewFileSnapshotStore(dir, 2, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	state := bytes.Repeat([]byte("snapshot state "), 20000)
	_, trans := raft.NewInmemTransport("127.0.0.1:1")
	cfg := raft.Configuration{Servers: []raft.Server{{ID: "n1", Address: "127.0.0.1:1"}}}
	sink, err := store.Create(raft.SnapshotVersionMax, 10, 1, cfg, 1, trans)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sink.Write(state); err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	half, err := store.Create(raft.SnapshotVersionMax, 20, 1, cfg, 1, trans)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := half.Write(state); err != nil {
		t.Fatal(err)
	}
	// The snapshot being written is abandoned by the crash; its file must
	// be closed for the mount to be idle, as a dead process's would be.
	half.Cancel()

	powerFailure(t, l)
	store, err = raft.NewFileSnapshotStore(dir, 2, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	list, err := store.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Index != 10 {
		t.Fatalf("snapshots after the power failure: %+v, want the one at index 10", list)
	}
	meta, rc, err := store.Open(list[0].ID) // verifies raft's CRC64
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if meta.Size != int64(len(state)) || !bytes.Equal(got, state) {
		t.Fatalf("snapshot content: %d bytes (meta says %d), want the %d written", len(got), meta.Size, len(state))
	}
}
