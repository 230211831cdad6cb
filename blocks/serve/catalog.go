package serve

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/singleflight"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/image"
	"github.com/blockfile/blockfile/blocks/store"
)

// catalog maps repositories and tags to the store's images. It re-reads
// index.json whenever the file changes (the store replaces it by rename, so
// its inode, size or mtime changes with every tag), and caches what it
// derives from an image index by the index's digest: content-addressed, so
// never stale.
type catalog struct {
	s *store.Store

	mu    sync.Mutex
	key   fileKey
	repos map[string]map[string]taggedImage // repository -> tag -> tagged index

	graphs     map[digest.Digest]*graph
	graphOrder []digest.Digest // oldest first, for eviction
	sf         singleflight.Group
}

// maxGraphs bounds the cached graphs (a graph holds one descriptor per blob
// of an image, blocks included: tens to hundreds of KiB).
const maxGraphs = 64

func newCatalog(s *store.Store) *catalog {
	return &catalog{s: s, graphs: map[digest.Digest]*graph{}}
}

type fileKey struct {
	dev, ino uint64
	size     int64
	mtime    int64
}

func statKey(p string) (fileKey, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return fileKey{}, err
	}
	k := fileKey{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		k.dev, k.ino = uint64(st.Dev), st.Ino
	}
	return k, nil
}

// splitStoreName splits a store name into repository and tag: "team/app:v2"
// is repository team/app, tag v2; a name without a tag is tag "latest". A
// registry host stays part of the repository ("registry.example/team/app"):
// requests reach it with containerd's ?ns=registry.example (see lookup).
//
// A name pinned by digest ("team/app@sha256:...", what a pull or fill of a
// digest is stored under) is no tag: its key is "@" and the digest, which
// no tag can be (tagRe), so it is reachable by digest and not listed.
func splitStoreName(n string) (repo, tag string, ok bool) {
	if i := strings.IndexByte(n, '@'); i >= 0 {
		repo, d := n[:i], digest.Digest(n[i+1:])
		if j := strings.LastIndexByte(repo, ':'); j > strings.LastIndexByte(repo, '/') {
			repo = repo[:j] // name:tag@digest
		}
		if repo == "" || d.Validate() != nil {
			return "", "", false
		}
		return repo, pinnedKey(d), true
	}
	repo, tag = n, "latest"
	if i := strings.LastIndexByte(n, ':'); i > strings.LastIndexByte(n, '/') {
		repo, tag = n[:i], n[i+1:]
	}
	if repo == "" || !tagRe.MatchString(tag) {
		return "", "", false
	}
	return repo, tag, true
}

// repos returns the repository table, re-read if index.json changed.
func (c *catalog) reposTable(ctx context.Context) (map[string]map[string]taggedImage, error) {
	k, err := statKey(filepath.Join(c.s.Root(), "index.json"))
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("store %s: %w", c.s.Root(), err)
	}
	c.mu.Lock()
	if c.repos != nil && k == c.key {
		r := c.repos
		c.mu.Unlock()
		return r, nil
	}
	c.mu.Unlock()
	// The key is taken before the read: if index.json changes in between,
	// the table read is newer than its key and the next request reads again.
	tags, err := c.s.Tags(ctx)
	if err != nil {
		return nil, err
	}
	repos := map[string]map[string]taggedImage{}
	for n, d := range tags {
		repo, tag, ok := splitStoreName(n)
		if !ok {
			continue
		}
		if repos[repo] == nil {
			repos[repo] = map[string]taggedImage{}
		}
		// "app" and "app:latest" are the same tag; the explicit one wins.
		if _, dup := repos[repo][tag]; dup && !strings.HasSuffix(n, ":"+tag) {
			continue
		}
		repos[repo][tag] = taggedImage{name: n, desc: d}
	}
	c.mu.Lock()
	c.key, c.repos = k, repos
	c.mu.Unlock()
	return repos, nil
}

// pinnedKey is the key of a digest-pinned store name in a repository's
// table (see splitStoreName).
func pinnedKey(d digest.Digest) string { return "@" + d.String() }

// isPinned tells a pinned key from a tag.
func isPinned(key string) bool { return strings.HasPrefix(key, "@") }

// candidates are the store repositories a request for repository name
// from registry ns (containerd's ?ns=, "" when absent) may mean, most
// specific first: "ns/name", then "src/name" for each registry src the
// request may be filled from (where fills are stored), then "name".
// Docker Hub's official images ("docker.io", "library/x") also match a
// store name "x".
func candidates(ns, name string, srcs []string) []string {
	var out []string
	if ns != "" {
		out = append(out, ns+"/"+name)
		if ns == "docker.io" || ns == "index.docker.io" || ns == "registry-1.docker.io" {
			out = append(out, "docker.io/"+name)
		}
	}
	for _, src := range srcs {
		if c := src + "/" + name; !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	out = append(out, name)
	if short, ok := strings.CutPrefix(name, "library/"); ok && (ns == "" || strings.HasSuffix(ns, "docker.io")) {
		out = append(out, short)
	}
	return out
}

// lookup returns the tags of the repository name as asked from registry
// ns, each with its store name and tagged index; a tag found under a more
// specific candidate hides the same tag under a later one. ok is false when
// no candidate exists (NAME_UNKNOWN).
func (c *catalog) lookup(ctx context.Context, ns, name string, srcs []string) (map[string]taggedImage, bool, error) {
	repos, err := c.reposTable(ctx)
	if err != nil {
		return nil, false, err
	}
	out := map[string]taggedImage{}
	found := false
	for _, cand := range candidates(ns, name, srcs) {
		tags, ok := repos[cand]
		if !ok {
			continue
		}
		found = true
		for t, ti := range tags {
			if _, dup := out[t]; !dup {
				out[t] = ti
			}
		}
	}
	return out, found, nil
}

type taggedImage struct {
	name string
	desc ocispec.Descriptor
}

// graph is what serve needs of one tagged image index: every blob reachable
// from it (so a repository serves its own blobs only, as a registry does),
// and for every standard layer with blocks how to hydrate it.
type graph struct {
	blobs  map[digest.Digest]ocispec.Descriptor
	layers map[digest.Digest]image.Layer
}

// graphOf returns the graph of the index t, from the cache or built once
// however many requests ask at the same time.
func (c *catalog) graphOf(ctx context.Context, t taggedImage) (*graph, error) {
	d := t.desc.Digest
	c.mu.Lock()
	g, ok := c.graphs[d]
	c.mu.Unlock()
	if ok {
		return g, nil
	}
	v, err, _ := c.sf.Do(d.String(), func() (any, error) {
		// A request's cancellation must not fail the others waiting here.
		g, err := c.buildGraph(context.WithoutCancel(ctx), t)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		if _, ok := c.graphs[d]; !ok {
			c.graphs[d] = g
			c.graphOrder = append(c.graphOrder, d)
			if len(c.graphOrder) > maxGraphs {
				delete(c.graphs, c.graphOrder[0])
				c.graphOrder = c.graphOrder[1:]
			}
		}
		c.mu.Unlock()
		return g, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*graph), nil
}

func (c *catalog) buildGraph(ctx context.Context, t taggedImage) (*graph, error) {
	blobs, err := c.s.Reachable(ctx, t.desc)
	if err != nil {
		return nil, fmt.Errorf("image %s (%s): %w", t.name, t.desc.Digest, err)
	}
	g := &graph{blobs: blobs, layers: map[digest.Digest]image.Layer{}}
	if t.desc.MediaType != ocispec.MediaTypeImageIndex {
		return g, nil // not a blockfile image: served as stored, nothing to hydrate
	}
	var idx ocispec.Index
	if err := c.s.GetJSON(ctx, t.desc, &idx); err != nil {
		return nil, fmt.Errorf("image %s: %w", t.name, err)
	}
	if _, ok := idx.Annotations[blocks.AnnotationStandard]; !ok {
		// Not a blockfile export (no blocked form): its blobs are served as
		// they are.
		return g, nil
	}
	img, err := image.ResolveIndex(ctx, c.s, t.name, t.desc)
	if err != nil {
		return nil, err
	}
	for _, m := range img.Manifests {
		for _, l := range m.Layers {
			if l.HasBlocks() {
				g.layers[l.Standard.Digest] = l
			}
		}
	}
	return g, nil
}
