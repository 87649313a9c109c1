package fsm

import "github.com/tidwall/btree"

// span is a run lo..hi of consecutive ready message ids.
type span struct{ lo, hi uint64 }

// readySet is the set of ready message ids, kept as runs of consecutive
// ids. A queue that is mostly enqueued and received in order is one run,
// so the ready index costs almost nothing per message (a tree of ids cost
// about 18 bytes each at the 50% fill a B-tree gets from ascending
// inserts). Worst case, alternate ids ready, it costs twice that.
type readySet struct {
	spans *btree.BTreeG[span] // by lo; runs never touch or overlap
	n     int
}

func newReadySet() readySet {
	return readySet{spans: newTree(func(a, b span) bool { return a.lo < b.lo })}
}

func (r readySet) copy() readySet { return readySet{spans: r.spans.Copy(), n: r.n} }

func (r *readySet) len() int { return r.n }

// around returns the run starting at or before id and the first run after
// id.
func (r *readySet) around(id uint64) (before span, hasBefore bool, after span, hasAfter bool) {
	r.spans.Descend(span{lo: id}, func(s span) bool {
		before, hasBefore = s, true
		return false
	})
	r.spans.Ascend(span{lo: id + 1}, func(s span) bool {
		after, hasAfter = s, true
		return false
	})
	return
}

func (r *readySet) has(id uint64) bool {
	b, ok, _, _ := r.around(id)
	return ok && id <= b.hi
}

// add inserts id, which must not be in the set.
func (r *readySet) add(id uint64) {
	b, hasB, a, hasA := r.around(id)
	joinB := hasB && b.hi+1 == id
	joinA := hasA && a.lo == id+1
	switch {
	case joinB && joinA:
		r.spans.Delete(a)
		r.spans.Set(span{lo: b.lo, hi: a.hi})
	case joinB:
		r.spans.Set(span{lo: b.lo, hi: id})
	case joinA:
		r.spans.Delete(a)
		r.spans.Set(span{lo: id, hi: a.hi})
	default:
		r.spans.Set(span{lo: id, hi: id})
	}
	r.n++
}

// remove deletes id, which must be in the set.
func (r *readySet) remove(id uint64) {
	s, _, _, _ := r.around(id)
	switch {
	case s.lo == s.hi:
		r.spans.Delete(s)
	case id == s.lo:
		r.spans.Delete(s)
		r.spans.Set(span{lo: id + 1, hi: s.hi})
	case id == s.hi:
		r.spans.Set(span{lo: s.lo, hi: id - 1})
	default:
		r.spans.Set(span{lo: s.lo, hi: id - 1})
		r.spans.Set(span{lo: id + 1, hi: s.hi})
	}
	r.n--
}

func (r *readySet) min() (uint64, bool) {
	s, ok := r.spans.Min()
	return s.lo, ok
}

// scan calls fn for each id in ascending order until it returns false.
func (r *readySet) scan(fn func(id uint64) bool) {
	r.spans.Scan(func(s span) bool {
		for id := s.lo; id <= s.hi; id++ {
			if !fn(id) {
				return false
			}
		}
		return true
	})
}
