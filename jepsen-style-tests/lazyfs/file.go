package lazyfs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// op is one pending change to a file: a write of data at off, or (data
// nil) a truncate to size.
type op struct {
	off  int64
	data []byte
	size int64
}

// fileState is the volatile part of one file: the operations made since
// its last fsync, in order. It exists only while there are some.
type fileState struct {
	fd   int   // a duplicate descriptor of the backing file, to apply ops without a path
	size int64 // the file's size as programs see it
	ops  []op
}

func (st *fileState) close() {
	if st.fd >= 0 {
		syscall.Close(st.fd)
		st.fd = -1
	}
}

// applyOps replays ops on the backing file and fsyncs it.
func applyOps(fd int, ops []op) error {
	for _, o := range ops {
		if o.data == nil {
			if err := syscall.Ftruncate(fd, o.size); err != nil {
				return err
			}
			continue
		}
		if err := pwriteFull(fd, o.data, o.off); err != nil {
			return err
		}
	}
	return syscall.Fsync(fd)
}

func pwriteFull(fd int, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := syscall.Pwrite(fd, b, off)
		if err != nil {
			return err
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

// preadFull reads up to len(b) bytes at off, stopping early only at end of
// file.
func preadFull(fd int, b []byte, off int64) (int, error) {
	done := 0
	for done < len(b) {
		n, err := syscall.Pread(fd, b[done:], off+int64(done))
		if err != nil {
			return done, err
		}
		if n == 0 {
			break
		}
		done += n
	}
	return done, nil
}

// record adds o to the pending operations of backing inode ino; fd is any
// read-write descriptor of that file.
func (l *FS) record(ino uint64, fd int, o op) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	st, ok := l.files[ino]
	if !ok {
		var s syscall.Stat_t
		if err := syscall.Fstat(fd, &s); err != nil {
			return err
		}
		dup, err := syscall.Dup(fd)
		if err != nil {
			return err
		}
		st = &fileState{fd: dup, size: s.Size}
		l.files[ino] = st
	}
	if o.data == nil {
		l.stats.Truncates++
		st.size = o.size
	} else {
		l.stats.Writes++
		l.stats.WrittenBytes += uint64(len(o.data))
		// The kernel reuses its buffer: keep a copy.
		o.data = append([]byte(nil), o.data...)
		st.size = max(st.size, o.off+int64(len(o.data)))
	}
	st.ops = append(st.ops, o)
	return nil
}

// sync makes ino's pending operations durable through fd.
func (l *FS) sync(ctx context.Context, ino uint64, fd int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stats.Fsyncs++
	st, ok := l.files[ino]
	if !ok {
		return syscall.Fsync(fd)
	}
	if l.hold != nil && (l.holdMatch == nil || l.holdMatch(l.relPath(fd))) {
		// HoldNextFsync: the power fails during this fsync. It never
		// completes: it ends, applying nothing, when the kernel interrupts
		// it (the caller was killed: a request already handed to us is
		// only abandoned through FUSE_INTERRUPT) or when the power failure
		// releases it.
		caught, release := l.hold, l.release
		l.hold, l.holdMatch = nil, nil
		close(caught)
		l.mu.Unlock()
		select {
		case <-release:
		case <-ctx.Done():
		}
		l.mu.Lock()
		return syscall.EIO
	}
	if l.lying {
		return nil
	}
	if err := applyOps(fd, st.ops); err != nil {
		// Half-applied: the backing file holds a prefix, as a failing disk
		// would. The ops stay pending so a later fsync can retry.
		return err
	}
	delete(l.files, ino)
	st.close()
	return nil
}

// relPath is the path of the backing file open as fd, relative to the
// backing directory ("" when the kernel cannot say).
func (l *FS) relPath(fd int) string {
	p, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return ""
	}
	rel, err := filepath.Rel(l.backing, p)
	if err != nil {
		return ""
	}
	return rel
}

// read fills dest with the file's content at off as programs see it.
func (l *FS) read(ino uint64, fd int, dest []byte, off int64) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st, ok := l.files[ino]
	if !ok {
		return preadFull(fd, dest, off)
	}
	clear(dest)
	if _, err := preadFull(fd, dest, off); err != nil {
		return 0, err
	}
	end := off + int64(len(dest))
	for _, o := range st.ops {
		if o.data == nil {
			// Bytes past a truncate read as zero, even if a later write
			// extends the file again.
			if o.size < end {
				clear(dest[max(o.size, off)-off:])
			}
			continue
		}
		lo, hi := max(o.off, off), min(o.off+int64(len(o.data)), end)
		if lo < hi {
			copy(dest[lo-off:hi-off], o.data[lo-o.off:hi-o.off])
		}
	}
	if st.size <= off {
		return 0, nil
	}
	return int(min(end, st.size) - off), nil
}

// patchSize replaces the backing size in out with the size programs see.
func (l *FS) patchSize(ino uint64, out *fuse.Attr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st, ok := l.files[ino]; ok {
		out.Size = uint64(st.size)
		out.Blocks = (out.Size + 511) / 512
	}
}

// node is a loopback node whose regular files keep their data in lazyfs's
// pending state until fsync. Directory operations are inherited from the
// loopback node unchanged, so they are durable at once.
type node struct {
	*fs.LoopbackNode
	lfs *FS
}

// WrapChild makes every node the loopback code creates (lookup, mkdir,
// create) a lazyfs node.
func (n *node) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	if lb, ok := ops.(*fs.LoopbackNode); ok {
		return &node{LoopbackNode: lb, lfs: n.lfs}
	}
	return ops
}

var (
	_ fs.NodeOpener    = (*node)(nil)
	_ fs.NodeCreater   = (*node)(nil)
	_ fs.NodeGetattrer = (*node)(nil)
	_ fs.NodeSetattrer = (*node)(nil)
	_ fs.NodeUnlinker  = (*node)(nil)
	_ fs.NodeRenamer   = (*node)(nil)

	_ fs.NodeWrapChilder = (*node)(nil)
)

func (n *node) backingPath() string {
	return filepath.Join(n.RootData.Path, n.Path(n.Root()))
}

// backingFlags turns open flags into those of the backing descriptor:
// always read-write (reads merge backing and pending data; fsync writes),
// never truncating or appending (both are pending operations, and the
// kernel already turns O_APPEND into explicit offsets), never O_DIRECT.
func backingFlags(flags uint32) int {
	f := int(flags) &^ (syscall.O_ACCMODE | syscall.O_TRUNC | syscall.O_APPEND | syscall.O_CREAT |
		syscall.O_EXCL | syscall.O_DIRECT | syscall.O_SYNC | syscall.O_DSYNC | fuse.FMODE_EXEC)
	return f | syscall.O_RDWR | syscall.O_CLOEXEC
}

func (n *node) open(path string, flags uint32, create bool, mode uint32) (*handle, syscall.Stat_t, syscall.Errno) {
	var st syscall.Stat_t
	bf := backingFlags(flags)
	if create {
		bf |= syscall.O_CREAT | int(flags)&syscall.O_EXCL
	}
	fd, err := syscall.Open(path, bf, mode)
	if err == syscall.EACCES && flags&syscall.O_ACCMODE == syscall.O_RDONLY {
		// A read-only file opened for reading by a non-root caller: it
		// never writes through this handle, so a read-only descriptor
		// does.
		fd, err = syscall.Open(path, bf&^syscall.O_RDWR|syscall.O_RDONLY, mode)
	}
	if err != nil {
		return nil, st, fs.ToErrno(err)
	}
	if err := syscall.Fstat(fd, &st); err != nil {
		syscall.Close(fd)
		return nil, st, fs.ToErrno(err)
	}
	h := &handle{lfs: n.lfs, fd: fd, ino: st.Ino, sync: flags&syscall.O_DSYNC != 0}
	n.lfs.mu.Lock()
	n.lfs.open[st.Ino]++
	n.lfs.mu.Unlock()
	if flags&syscall.O_TRUNC != 0 && flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		if err := n.lfs.record(st.Ino, fd, op{size: 0}); err != nil {
			h.Release(context.Background())
			return nil, st, fs.ToErrno(err)
		}
	}
	return h, st, 0
}

// Open opens a regular file. O_TRUNC is a pending truncate.
func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	h, _, errno := n.open(n.backingPath(), flags, false, 0)
	if errno != 0 {
		return nil, 0, errno
	}
	return h, 0, 0
}

// Create makes the file in the backing directory at once (directory
// operations are durable) with no pending content.
func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	p := filepath.Join(n.backingPath(), name)
	h, st, errno := n.open(p, flags, true, mode)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	if os.Geteuid() == 0 {
		if caller, ok := fuse.FromContext(ctx); ok {
			syscall.Lchown(p, int(caller.Uid), int(caller.Gid))
		}
	}
	ch := n.NewInode(ctx, &fs.LoopbackNode{RootData: n.RootData}, fs.StableAttr{Mode: st.Mode, Ino: st.Ino})
	out.FromStat(&st)
	n.lfs.patchSize(st.Ino, &out.Attr)
	return ch, h, 0, 0
}

// Getattr reports the backing attributes with the size programs see.
func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	var st syscall.Stat_t
	var err error
	if h, ok := f.(*handle); ok {
		err = syscall.Fstat(h.fd, &st)
	} else if n.IsRoot() {
		err = syscall.Stat(n.backingPath(), &st)
	} else {
		err = syscall.Lstat(n.backingPath(), &st)
	}
	if err != nil {
		return fs.ToErrno(err)
	}
	out.FromStat(&st)
	n.lfs.patchSize(st.Ino, &out.Attr)
	return 0
}

// Setattr makes a size change pending and passes every other attribute
// to the backing file at once.
func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok {
		h, _ := f.(*handle)
		if h == nil {
			var errno syscall.Errno
			if h, _, errno = n.open(n.backingPath(), syscall.O_RDWR, false, 0); errno != 0 {
				return errno
			}
			defer h.Release(ctx)
		}
		if err := n.lfs.record(h.ino, h.fd, op{size: int64(size)}); err != nil {
			return fs.ToErrno(err)
		}
		in.Valid &^= fuse.FATTR_SIZE
	}
	if in.Valid&(fuse.FATTR_MODE|fuse.FATTR_UID|fuse.FATTR_GID|fuse.FATTR_ATIME|fuse.FATTR_MTIME|fuse.FATTR_ATIME_NOW|fuse.FATTR_MTIME_NOW) != 0 {
		if errno := n.LoopbackNode.Setattr(ctx, nil, in, out); errno != 0 {
			return errno
		}
	}
	return n.Getattr(ctx, f, out)
}

// lastLink returns the backing inode of path when removing path removes
// the file's last link.
func lastLink(path string) (uint64, bool) {
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return 0, false
	}
	return st.Ino, st.Mode&syscall.S_IFMT == syscall.S_IFREG && st.Nlink <= 1
}

// Unlink removes the name at once; a file whose last link it was loses its
// pending operations with it.
func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	ino, last := lastLink(filepath.Join(n.backingPath(), name))
	if errno := n.LoopbackNode.Unlink(ctx, name); errno != 0 {
		return errno
	}
	if last {
		n.lfs.forgetUnlinked(ino)
	}
	return 0
}

// Rename renames at once; a file it replaces loses its pending operations.
func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	var target string
	if np, ok := newParent.(*node); ok {
		target = filepath.Join(np.backingPath(), newName)
	}
	src, _ := lastLink(filepath.Join(n.backingPath(), name))
	ino, last := lastLink(target)
	if errno := n.LoopbackNode.Rename(ctx, name, newParent, newName, flags); errno != 0 {
		return errno
	}
	if last && ino != src && flags&unixRenameExchange == 0 {
		n.lfs.forgetUnlinked(ino)
	}
	return 0
}

// unixRenameExchange is RENAME_EXCHANGE: both names survive, nothing is
// unlinked.
const unixRenameExchange = 2

// forgetUnlinked drops the pending state of a file that no longer has a
// name, unless a process still has it open: like any file system, lazyfs
// keeps an unlinked file readable through open descriptors, and the last
// Release forgets it.
func (l *FS) forgetUnlinked(ino uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st, ok := l.files[ino]
	if !ok || l.open[ino] > 0 {
		return
	}
	var s syscall.Stat_t
	if err := syscall.Fstat(st.fd, &s); err == nil && s.Nlink == 0 {
		delete(l.files, ino)
		st.close()
	}
}

// handle is an open regular file: a read-write descriptor of the backing
// file plus the file's backing inode number, which keys its pending state.
type handle struct {
	lfs  *FS
	fd   int
	ino  uint64
	sync bool // opened with O_SYNC or O_DSYNC: every write is durable
}

var (
	_ fs.FileReader   = (*handle)(nil)
	_ fs.FileWriter   = (*handle)(nil)
	_ fs.FileFsyncer  = (*handle)(nil)
	_ fs.FileFlusher  = (*handle)(nil)
	_ fs.FileReleaser = (*handle)(nil)
)

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := h.lfs.read(h.ino, h.fd, dest, off)
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if err := h.lfs.record(h.ino, h.fd, op{off: off, data: data}); err != nil {
		return 0, fs.ToErrno(err)
	}
	if h.sync {
		if err := h.lfs.sync(ctx, h.ino, h.fd); err != nil {
			return 0, fs.ToErrno(err)
		}
	}
	return uint32(len(data)), 0
}

// Fsync serves both fsync and fdatasync: it makes every pending operation
// of the file durable.
func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	return fs.ToErrno(h.lfs.sync(ctx, h.ino, h.fd))
}

// Flush (close) makes nothing durable.
func (h *handle) Flush(ctx context.Context) syscall.Errno { return 0 }

func (h *handle) Release(ctx context.Context) syscall.Errno {
	h.lfs.mu.Lock()
	if h.lfs.open[h.ino]--; h.lfs.open[h.ino] <= 0 {
		delete(h.lfs.open, h.ino)
	}
	h.lfs.mu.Unlock()
	h.lfs.forgetUnlinked(h.ino)
	return fs.ToErrno(syscall.Close(h.fd))
}
