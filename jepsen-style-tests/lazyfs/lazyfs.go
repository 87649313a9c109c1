package lazyfs

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Mode says what a power failure does to unsynced writes.
type Mode int

const (
	// Drop loses every write and truncate not yet fsynced.
	Drop Mode = iota
	// Torn keeps a random prefix of each file's unsynced operations, the
	// last kept write cut at a random byte.
	Torn
)

func (m Mode) String() string {
	switch m {
	case Drop:
		return "drop"
	case Torn:
		return "torn"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ErrBusy is returned by PowerFailure and Unmount while a process still
// has files open on the mount.
var ErrBusy = errors.New("lazyfs: mount is busy")

// Loss describes what one power failure threw away.
type Loss struct {
	// Files is how many files had unsynced operations.
	Files int
	// Ops and Bytes count the unsynced operations and written bytes lost.
	Ops   int
	Bytes int64
	// KeptOps and KeptBytes count what a Torn failure kept.
	KeptOps   int
	KeptBytes int64
}

// FS is one mounted lazyfs: a backing directory seen through a mount point.
type FS struct {
	backing, mountpoint string

	// mu guards server and every file's pending state. One lock per mount
	// is plenty for a test file system and keeps fsync, reads and writes
	// of one file trivially ordered.
	mu     sync.Mutex
	server *fuse.Server
	files  map[uint64]*fileState // files with pending operations, by backing inode number
	open   map[uint64]int        // open handles by backing inode number
	stats  Stats

	hold      chan struct{}         // armed by HoldNextFsync: closed when an fsync is held
	holdMatch func(rel string) bool // which files HoldNextFsyncOf holds; nil: any
	release   chan struct{}         // closed by a power failure or unmount: held fsyncs fail
	lying     bool                  // LieAboutFsync: fsync succeeds and makes nothing durable
	// busyWait is how long an unmount tries before it reports ErrBusy
	// (0: defaultBusyWait).
	busyWait time.Duration
}

// defaultBusyWait: a process killed in a held fsync let go of the mount
// more than 4 s after it exited on a loaded two-core machine.
const defaultBusyWait = 15 * time.Second

// Available reports why lazyfs cannot mount on this machine, or nil when it
// can: it needs /dev/fuse, and either root (a direct mount) or a
// fusermount helper.
func Available() error {
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("lazyfs: /dev/fuse unavailable (%v); load the fuse module (modprobe fuse) and install fuse3", err)
	}
	f.Close()
	if os.Geteuid() == 0 {
		return nil
	}
	for _, bin := range []string{"fusermount3", "fusermount"} {
		if _, err := exec.LookPath(bin); err == nil {
			return nil
		}
	}
	return errors.New("lazyfs: not root and no fusermount helper found (apt-get install fuse3)")
}

// Mount serves backing at mountpoint (both must be existing directories).
func Mount(backing, mountpoint string) (*FS, error) {
	for name, dir := range map[string]string{"backing": backing, "mountpoint": mountpoint} {
		st, err := os.Stat(dir)
		if err != nil {
			return nil, fmt.Errorf("lazyfs: %s directory: %w", name, err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("lazyfs: %s %s is not a directory", name, dir)
		}
	}
	l := &FS{backing: backing, mountpoint: mountpoint, files: map[uint64]*fileState{}, open: map[uint64]int{}}
	if err := l.mount(); err != nil {
		return nil, err
	}
	return l, nil
}

// Mountpoint is the directory programs use.
func (l *FS) Mountpoint() string { return l.mountpoint }

// Backing is the directory that holds only durable data.
func (l *FS) Backing() string { return l.backing }

func (l *FS) mount() error {
	var st syscall.Stat_t
	if err := syscall.Stat(l.backing, &st); err != nil {
		return fmt.Errorf("lazyfs: stat %s: %w", l.backing, err)
	}
	root := &fs.LoopbackRoot{Path: l.backing, Dev: uint64(st.Dev)}
	root.RootNode = &node{LoopbackNode: &fs.LoopbackNode{RootData: root}, lfs: l}
	// Zero timeouts: the kernel asks for every attribute, so the size it
	// sees always includes pending writes and truncates.
	zero := time.Duration(0)
	server, err := fs.Mount(l.mountpoint, root.RootNode, &fs.Options{
		AttrTimeout:     &zero,
		EntryTimeout:    &zero,
		NegativeTimeout: &zero,
		MountOptions: fuse.MountOptions{
			FsName:      "lazyfs:" + l.backing,
			Name:        "lazyfs",
			DirectMount: os.Geteuid() == 0,
			MaxWrite:    1 << 20,
		},
	})
	if err != nil {
		return fmt.Errorf("lazyfs: mount %s on %s: %w", l.backing, l.mountpoint, err)
	}
	l.mu.Lock()
	l.server = server
	l.release = make(chan struct{})
	l.mu.Unlock()
	return nil
}

// HoldNextFsync arms the mount: the next fsync or fdatasync of a file with
// unsynced data is held forever instead of made durable, and the returned
// channel is closed when that happens. It lets a test cut the power at the
// worst moment, while a process waits for its data to reach the disk: kill
// the process once the channel is closed, then call PowerFailure, which
// fails the held fsync with EIO and drops its data.
func (l *FS) HoldNextFsync() <-chan struct{} { return l.HoldNextFsyncOf(nil) }

// HoldNextFsyncOf is HoldNextFsync for the files match accepts, by their
// path relative to the backing directory (for example a snapshot being
// written, "snapshots/2-40-123.tmp/state.bin"); fsyncs of other files
// complete as usual. A nil match accepts every file.
func (l *FS) HoldNextFsyncOf(match func(rel string) bool) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.hold, l.holdMatch = make(chan struct{}), match
	return l.hold
}

// LieAboutFsync makes fsync and fdatasync (and O_SYNC writes) succeed
// without making anything durable while on is true, like a disk whose
// write cache acknowledges flushes it never does. Programs then cannot
// know what a power failure keeps: it is how a test shows that a checker
// notices acknowledged data going missing.
func (l *FS) LieAboutFsync(on bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lying = on
}

// releaseHeld fails a held fsync and disarms HoldNextFsync. The process
// that waited on it is dead by contract, so nothing sees the error.
func (l *FS) releaseHeld() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.hold, l.holdMatch = nil, nil
	if l.release != nil {
		close(l.release)
		l.release = nil
	}
}

// unmount detaches the mount. It fails with ErrBusy while files are open.
func (l *FS) unmount() error {
	l.mu.Lock()
	server := l.server
	l.mu.Unlock()
	if server == nil {
		return nil
	}
	// A held fsync blocks one of the server's loops, and unmounting waits
	// for every loop.
	l.releaseHeld()
	// A killed process's files are released by the kernel shortly after
	// its exit; go-fuse retries for a while, and so do we. One that was
	// killed in a held fsync let go of them more than 4 s after its exit
	// on a loaded machine.
	wait := l.busyWait
	if wait == 0 {
		wait = defaultBusyWait
	}
	var err error
	for deadline := time.Now().Add(wait); ; time.Sleep(100 * time.Millisecond) {
		if err = server.Unmount(); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		l.mu.Lock()
		l.release = make(chan struct{})
		open := 0
		for _, n := range l.open {
			open += n
		}
		l.mu.Unlock()
		return fmt.Errorf("%w: unmount %s after trying for %v, %d handles open: %v (stop every process using it first)", ErrBusy, l.mountpoint, wait, open, err)
	}
	server.Wait()
	l.mu.Lock()
	l.server = nil
	l.mu.Unlock()
	return nil
}

// PowerFailure cuts the power: the mount goes away, every file's unsynced
// operations are dropped (Drop) or a random prefix of them is made durable
// (Torn, drawn from rng), and the backing directory is mounted again.
// Every process using the mount must be dead first; while one still has a
// file open, PowerFailure returns ErrBusy and nothing is lost.
func (l *FS) PowerFailure(mode Mode, rng *rand.Rand) (Loss, error) {
	if mode != Drop && mode != Torn {
		return Loss{}, fmt.Errorf("lazyfs: power failure mode %d, want Drop (0) or Torn (1)", int(mode))
	}
	if mode == Torn && rng == nil {
		return Loss{}, errors.New("lazyfs: a Torn power failure needs a random source, rng is nil")
	}
	if err := l.unmount(); err != nil {
		return Loss{}, err
	}
	l.mu.Lock()
	files := l.files
	l.files, l.open = map[uint64]*fileState{}, map[uint64]int{}
	l.mu.Unlock()

	var loss Loss
	var errs []error
	for _, st := range files {
		loss.Files++
		keep := 0
		var cut int
		if mode == Torn {
			keep = rng.IntN(len(st.ops) + 1)
			if keep < len(st.ops) && st.ops[keep].data != nil {
				cut = rng.IntN(len(st.ops[keep].data) + 1)
			}
		}
		for i, o := range st.ops {
			switch {
			case i < keep:
				loss.KeptOps++
				loss.KeptBytes += int64(len(o.data))
			case i == keep && cut > 0:
				loss.KeptBytes += int64(cut)
				loss.Ops++
				loss.Bytes += int64(len(o.data) - cut)
			default:
				loss.Ops++
				loss.Bytes += int64(len(o.data))
			}
		}
		if mode == Torn {
			ops := st.ops[:keep]
			if cut > 0 {
				torn := st.ops[keep]
				torn.data = torn.data[:cut]
				ops = append(ops[:keep:keep], torn)
			}
			if err := applyOps(st.fd, ops); err != nil {
				errs = append(errs, err)
			}
		}
		st.close()
	}
	if err := l.mount(); err != nil {
		errs = append(errs, err)
	}
	return loss, errors.Join(errs...)
}

// Unmount is a clean shutdown: like an operating system that syncs its
// page cache before powering off, it makes every pending operation durable
// and then unmounts. It fails with ErrBusy while files are open.
func (l *FS) Unmount() error {
	if err := l.unmount(); err != nil {
		return err
	}
	l.mu.Lock()
	files := l.files
	l.files, l.open = map[uint64]*fileState{}, map[uint64]int{}
	l.mu.Unlock()
	var errs []error
	for _, st := range files {
		errs = append(errs, applyOps(st.fd, st.ops))
		st.close()
	}
	return errors.Join(errs...)
}

// Stats counts the file operations a mount has served since Mount.
type Stats struct {
	Writes, Truncates, Fsyncs uint64
	WrittenBytes              uint64
}

// Stats returns the operation counts, so a test can show that a program
// really wrote (and synced) through the mount.
func (l *FS) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stats
}

// Pending reports how many files hold unsynced operations and how many
// bytes those operations write.
func (l *FS) Pending() (files int, bytes int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, st := range l.files {
		files++
		for _, o := range st.ops {
			bytes += int64(len(o.data))
		}
	}
	return files, bytes
}
