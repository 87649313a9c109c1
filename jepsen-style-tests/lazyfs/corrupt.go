package lazyfs

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
)

// These corrupt a file of a stopped node. Call them on the backing path
// (FS.Backing) or on a plain data dir, never on a file a running process
// has open: the point is to model what the disk hands back after a
// restart, not a race with the writer.

// FlipBit inverts bit (0-7) of the byte at offset in path.
func FlipBit(path string, offset int64, bit uint) error {
	if bit > 7 {
		return fmt.Errorf("lazyfs: flip bit %d of %s: bit must be 0 to 7", bit, path)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("lazyfs: flip bit: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if offset < 0 || offset >= st.Size() {
		return fmt.Errorf("lazyfs: flip bit at offset %d of %s: offset must be 0 to %d (the file size minus one)", offset, path, st.Size()-1)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, offset); err != nil {
		return err
	}
	b[0] ^= 1 << bit
	if _, err := f.WriteAt(b, offset); err != nil {
		return err
	}
	return f.Sync()
}

// ErrPatternNotFound is returned by FlipBitsAt when the file does not hold
// the pattern.
var ErrPatternNotFound = errors.New("lazyfs: pattern not found")

// FlipBitsAt flips one bit in the middle of every occurrence of pattern
// in path and returns their offsets. It is how a test hits one chosen
// record (a log entry's payload in raft.db, a value in a snapshot) rather
// than free space.
func FlipBitsAt(path string, pattern []byte) ([]int64, error) {
	if len(pattern) == 0 {
		return nil, fmt.Errorf("lazyfs: flip bits in %s: pattern is empty, want at least 1 byte", path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("lazyfs: flip bits: %w", err)
	}
	var offsets []int64
	for from := 0; ; {
		i := bytes.Index(data[from:], pattern)
		if i < 0 {
			break
		}
		offsets = append(offsets, int64(from+i+len(pattern)/2))
		from += i + len(pattern)
	}
	if len(offsets) == 0 {
		return nil, fmt.Errorf("%w: %q in %s", ErrPatternNotFound, pattern, path)
	}
	for _, off := range offsets {
		if err := FlipBit(path, off, 0); err != nil {
			return offsets, err
		}
	}
	return offsets, nil
}

// FlipRandomBits flips n random bits anywhere in path and returns the
// byte offsets it hit.
func FlipRandomBits(path string, n int, rng *rand.Rand) ([]int64, error) {
	if n < 1 {
		return nil, fmt.Errorf("lazyfs: flip %d random bits in %s: want at least 1", n, path)
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("lazyfs: flip bits: %w", err)
	}
	if st.Size() == 0 {
		return nil, fmt.Errorf("lazyfs: flip bits in %s: the file is empty", path)
	}
	offsets := make([]int64, n)
	for i := range offsets {
		offsets[i] = rng.Int64N(st.Size())
		if err := FlipBit(path, offsets[i], uint(rng.IntN(8))); err != nil {
			return offsets[:i], err
		}
	}
	return offsets, nil
}

// Truncate cuts path to size bytes, which must be below its current size.
func Truncate(path string, size int64) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("lazyfs: truncate: %w", err)
	}
	if size < 0 || size >= st.Size() {
		return fmt.Errorf("lazyfs: truncate %s to %d bytes: size must be 0 to %d (below the current size)", path, size, st.Size()-1)
	}
	return os.Truncate(path, size)
}
