package store

// The page tree, checked before bbolt walks it.

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
	"os"

	bolt "go.etcd.io/bbolt"
)

// bbolt's file format (go.etcd.io/bbolt/internal/common), in the machine's
// byte order. A page is a 16-byte header (id uint64, flags uint16, count
// uint16, overflow uint32: the pages after it that it spans), then its
// elements. A branch element is pos, ksize (uint32) and a child page id; a
// leaf element is flags, pos, ksize and vsize (uint32); pos counts from the
// element. A bucket's value starts with its root page id and sequence
// (uint64); a root of 0 means the bucket's page follows, inline. A meta
// page holds, after the header, magic, version, page size and flags
// (uint32), the root bucket (16 bytes), the freelist page id, the high
// water mark and the transaction id (uint64), then an FNV-1a checksum of
// what comes before it.
const (
	pageHeaderSize   = 16
	elementSize      = 16
	bucketHeaderSize = 16
	branchPageFlag   = 0x01
	leafPageFlag     = 0x02
	freelistPageFlag = 0x10
	bucketLeafFlag   = 0x01
	metaMagic        = 0xED0CDAED
	metaVersion      = 2
	noFreelist       = ^uint64(0)
)

var native = binary.NativeEndian

// checkTree checks the page tree of the file at path, as bbolt will find it
// through tx, without bbolt: bbolt follows page ids and spans as it finds
// them, so a page reached twice (a cycle), or a span or freelist that runs
// far past the file, has it loop for hours or allocate without bound. Every
// page reached, the freelist's too, must be below the high water mark, of
// its kind, and reached once; every element must lie in its page and have
// a key (bbolt's first write to a page with an empty one panics); every
// free page must be below the high water mark.
//
// The file is read once, in order; what the walk needs of each page is
// kept, and a page that spans past what was read with it is read again if
// the walk reaches it.
func checkTree(path string, tx *bolt.Tx, pageSize int) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer f.Close()
	ps, hwm := uint64(pageSize), uint64(tx.Size())/uint64(pageSize)
	w := &treeWalk{f: f, pageSize: ps, pages: make([]pageInfo, hwm), seen: make([]bool, hwm)}
	chunk := max(1, (1<<20)/ps) * ps
	buf := make([]byte, chunk)
	for off := uint64(0); off < hwm*ps; off += chunk {
		b := buf[:min(chunk, hwm*ps-off)]
		if _, err := f.ReadAt(b, int64(off)); err != nil {
			return fmt.Errorf("store: check %s: %w", path, err)
		}
		for at := uint64(0); at < uint64(len(b)); at += ps {
			w.pages[(off+at)/ps] = parsePage(b[at:], ps, hwm)
		}
	}
	freelist, reason := w.freelist(uint64(tx.Cursor().Bucket().Root()))
	if reason == "" && freelist != noFreelist {
		_, reason = w.reach(freelist, freelistPageFlag)
	}
	if reason == "" {
		reason = w.tree(uint64(tx.Cursor().Bucket().Root()))
	}
	if reason == "" {
		return nil
	}
	return &DamagedError{Path: path, Reason: reason}
}

// pageInfo is what the walk needs of a page, if it reaches it.
type pageInfo struct {
	id       uint64 // as the header says
	flags    uint16
	overflow uint32
	refs     []uint64 // a branch page's children, or the buckets' root pages in a leaf page
	problem  string   // what is wrong inside it
	cut      bool     // it spans past what was read with it: read it again
}

// parsePage parses the page at the start of b, which holds it or its
// first part, in a file of hwm pages.
func parsePage(b []byte, pageSize, hwm uint64) pageInfo {
	p := pageInfo{id: native.Uint64(b), flags: native.Uint16(b[8:]), overflow: native.Uint32(b[12:])}
	span := (uint64(p.overflow) + 1) * pageSize
	if span > uint64(len(b)) {
		p.cut = true
		return p
	}
	b = b[:span]
	n := uint64(native.Uint16(b[10:]))
	switch {
	case p.flags&branchPageFlag != 0:
		if pageHeaderSize+n*elementSize > span {
			p.problem = "has more elements than room"
			return p
		}
		for i := range n {
			e := pageHeaderSize + i*elementSize
			switch ksize := uint64(native.Uint32(b[e+4:])); {
			case ksize == 0: // bbolt's first write below the page panics
				p.problem = fmt.Sprintf("key %d is empty", i)
				return p
			case e+uint64(native.Uint32(b[e:]))+ksize > span:
				p.problem = fmt.Sprintf("key %d lies outside the page", i)
				return p
			}
			p.refs = append(p.refs, native.Uint64(b[e+8:]))
		}
	case p.flags&leafPageFlag != 0:
		p.refs, p.problem = leaf(b, nil)
	case p.flags&freelistPageFlag != 0:
		ids := uint64(pageHeaderSize)
		if n == 0xFFFF { // the count is the first element
			n, ids = native.Uint64(b[pageHeaderSize:]), pageHeaderSize+8
		}
		if n > (span-ids)/8 {
			p.problem = fmt.Sprintf("lists %d pages, more than it holds", n)
			return p
		}
		// bbolt would hand out a page past the file, growing it to there.
		for i := range n {
			if id := native.Uint64(b[ids+i*8:]); id < 2 || id >= hwm {
				p.problem = fmt.Sprintf("lists page %d as free, outside the file's %d pages", id, hwm)
				return p
			}
		}
	}
	return p
}

// leaf checks the leaf page p and returns the root pages of the buckets in
// it, appended to roots, or what is wrong; an inline bucket's page is
// checked in turn.
func leaf(p []byte, roots []uint64) ([]uint64, string) {
	if len(p) < pageHeaderSize || native.Uint16(p[8:])&leafPageFlag == 0 {
		return roots, "holds an inline bucket that is not a leaf page"
	}
	n := uint64(native.Uint16(p[10:]))
	if pageHeaderSize+n*elementSize > uint64(len(p)) {
		return roots, "has more elements than room"
	}
	for i := range n {
		e := pageHeaderSize + i*elementSize
		v := e + uint64(native.Uint32(p[e+4:])) + uint64(native.Uint32(p[e+8:]))
		end := v + uint64(native.Uint32(p[e+12:]))
		switch {
		case end > uint64(len(p)):
			return roots, fmt.Sprintf("element %d lies outside the page", i)
		case native.Uint32(p[e+8:]) == 0:
			return roots, fmt.Sprintf("key %d is empty", i)
		case native.Uint32(p[e:])&bucketLeafFlag == 0:
		case end-v < bucketHeaderSize:
			return roots, fmt.Sprintf("bucket %d is cut short", i)
		case native.Uint64(p[v:]) != 0:
			roots = append(roots, native.Uint64(p[v:]))
		default:
			var problem string
			if roots, problem = leaf(p[v+bucketHeaderSize:end], roots); problem != "" {
				return roots, problem
			}
		}
	}
	return roots, ""
}

type treeWalk struct {
	f        io.ReaderAt
	pageSize uint64
	pages    []pageInfo
	seen     []bool
}

// freelist returns the freelist page id of the meta page bbolt uses: the
// valid one with the higher transaction id. Its root must be root, and its
// high water mark the transaction's.
func (w *treeWalk) freelist(root uint64) (uint64, string) {
	type meta struct {
		root, freelist, hwm, txid uint64
		valid                     bool
	}
	var metas [2]meta
	for i := range metas {
		b := make([]byte, 64)
		if _, err := w.f.ReadAt(b, int64(uint64(i)*w.pageSize+pageHeaderSize)); err != nil {
			continue
		}
		sum := fnv.New64a()
		sum.Write(b[:56])
		metas[i] = meta{root: native.Uint64(b[16:]), freelist: native.Uint64(b[32:]), hwm: native.Uint64(b[40:]), txid: native.Uint64(b[48:]),
			valid: native.Uint32(b) == metaMagic && native.Uint32(b[4:]) == metaVersion && native.Uint64(b[56:]) == sum.Sum64()}
	}
	m := metas[0]
	if metas[1].txid > m.txid && metas[1].valid || !m.valid {
		m = metas[1]
	}
	if !m.valid || m.root != root || m.hwm != uint64(len(w.pages)) {
		return 0, "its meta pages do not say what bbolt read from them"
	}
	return m.freelist, ""
}

// reach returns page id, which must be of kind flag, below the high water
// mark with its span, and not reached before, or what is wrong.
func (w *treeWalk) reach(id uint64, flag uint16) (pageInfo, string) {
	hwm := uint64(len(w.pages))
	if id < 2 || id >= hwm {
		return pageInfo{}, fmt.Sprintf("a page points outside the file (to page %d of %d)", id, hwm)
	}
	p := w.pages[id]
	switch {
	case p.id != id:
		return p, fmt.Sprintf("page %d says it is page %d", id, p.id)
	case p.flags&flag == 0:
		return p, fmt.Sprintf("page %d is not of the kind that points to it (flags %#x)", id, p.flags)
	case uint64(p.overflow) >= hwm-id:
		return p, fmt.Sprintf("page %d spans %d more pages, past the file's %d", id, p.overflow, hwm)
	}
	for i := id; i <= id+uint64(p.overflow); i++ {
		if w.seen[i] {
			return p, fmt.Sprintf("page %d is reached twice", i)
		}
		w.seen[i] = true
	}
	if p.cut {
		b := make([]byte, (uint64(p.overflow)+1)*w.pageSize)
		if _, err := w.f.ReadAt(b, int64(id*w.pageSize)); err != nil {
			return p, fmt.Sprintf("page %d does not read: %v", id, err)
		}
		p = parsePage(b, w.pageSize, hwm)
	}
	if p.problem != "" {
		return p, fmt.Sprintf("page %d %s", id, p.problem)
	}
	return p, ""
}

// tree walks the branch and leaf pages from page id, and the buckets in
// them.
func (w *treeWalk) tree(id uint64) string {
	p, reason := w.reach(id, branchPageFlag|leafPageFlag)
	for _, ref := range p.refs {
		if reason != "" {
			break
		}
		reason = w.tree(ref)
	}
	return reason
}
