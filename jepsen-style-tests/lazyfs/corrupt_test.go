package lazyfs

import (
	"bytes"
	"errors"
	"math/bits"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func countBitDiffs(a, b []byte) int {
	n := 0
	for i := range a {
		n += bits.OnesCount8(a[i] ^ b[i])
	}
	return n
}

func TestCorruptionHelpers(t *testing.T) {
	p := filepath.Join(t.TempDir(), "data")
	orig := []byte("header ENTRY-0001 middle ENTRY-0001 trailer")
	if err := os.WriteFile(p, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	offs, err := FlipBitsAt(p, []byte("ENTRY-0001"))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	if len(offs) != 2 || countBitDiffs(orig, got) != 2 || bytes.Contains(got, []byte("ENTRY-0001")) {
		t.Fatalf("FlipBitsAt: offsets %v, content %q: want both occurrences hit by one bit each", offs, got)
	}
	if _, err := FlipBitsAt(p, []byte("absent")); !errors.Is(err, ErrPatternNotFound) {
		t.Fatalf("FlipBitsAt of an absent pattern: %v, want ErrPatternNotFound", err)
	}

	before, _ := os.ReadFile(p)
	if _, err := FlipRandomBits(p, 3, rand.New(rand.NewPCG(1, 2))); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(p)
	if d := countBitDiffs(before, after); d < 1 || d > 3 {
		t.Fatalf("FlipRandomBits(3) changed %d bits", d)
	}

	if err := Truncate(p, 6); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(p); st.Size() != 6 {
		t.Fatalf("size after Truncate(6): %d", st.Size())
	}

	for name, err := range map[string]error{
		"offset past the end": FlipBit(p, 6, 0),
		"bit 8":               FlipBit(p, 0, 8),
		"grow by truncate":    Truncate(p, 6),
		"empty pattern":       func() error { _, err := FlipBitsAt(p, nil); return err }(),
		"zero random bits":    func() error { _, err := FlipRandomBits(p, 0, nil); return err }(),
	} {
		if err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %v, want one naming %s and the limit", name, err, p)
		}
	}
}
