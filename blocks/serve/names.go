package serve

import (
	"net/http"
	"regexp"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// The grammar of the distribution spec (section "Pulling manifests"):
// repository names are path components of lowercase alphanumerics joined by
// separators, tags a word of at most 128 characters. Neither admits "..",
// a slash inside a component, or anything percent-encoded.
var (
	nameRe   = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagRe    = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	domainRe = regexp.MustCompile(`^` + reference.DomainRegexp.String() + `$`)
)

const (
	// maxNameLen is distribution's limit on a repository name.
	maxNameLen = 255
	// maxDigestLen bounds a digest before it is parsed: sha512 is
	// "sha512:" + 128 hex.
	maxDigestLen = 7 + 128
)

// route is a parsed request path.
type route struct {
	kind string // "base", "manifests", "blobs", "tags"
	name string // repository
	ref  string // tag or digest (manifests), digest (blobs)
}

// parsePath splits a /v2/ request path into its route. It refuses encoded
// slashes (a name is matched on the decoded path, so %2F would otherwise
// split a component), then checks the name against the spec's grammar.
func parsePath(r *http.Request) (route, *apiError) {
	if esc := strings.ToLower(r.URL.EscapedPath()); strings.Contains(esc, "%2f") || strings.Contains(esc, "%5c") || strings.Contains(esc, "%00") {
		return route{}, errf(http.StatusBadRequest, codeNameInvalid, "encoded slash or NUL in path", nil)
	}
	p := r.URL.Path
	if p == "/v2" || p == "/v2/" {
		return route{kind: "base"}, nil
	}
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return route{}, errf(http.StatusNotFound, codeUnsupported, "not a distribution API path", nil)
	}
	var rt route
	if name, ok := strings.CutSuffix(rest, "/tags/list"); ok {
		rt = route{kind: "tags", name: name}
	} else {
		i := strings.LastIndexByte(rest, '/')
		if i < 0 {
			return route{}, errf(http.StatusNotFound, codeUnsupported, "not a distribution API path", nil)
		}
		head, ref := rest[:i], rest[i+1:]
		j := strings.LastIndexByte(head, '/')
		if j < 0 {
			return route{}, errf(http.StatusNotFound, codeUnsupported, "not a distribution API path", nil)
		}
		kind, name := head[j+1:], head[:j]
		switch {
		case kind == "manifests" || kind == "blobs":
			rt = route{kind: kind, name: name, ref: ref}
		case kind == "uploads" && strings.HasSuffix(name, "/blobs"):
			return route{}, errf(http.StatusMethodNotAllowed, codeUnsupported, "this registry is read-only (a blockfile site mirror)", nil)
		default:
			return route{}, errf(http.StatusNotFound, codeUnsupported, "not a distribution API path", nil)
		}
	}
	if len(rt.name) > maxNameLen || !nameRe.MatchString(rt.name) {
		return route{}, errf(http.StatusBadRequest, codeNameInvalid, "invalid repository name", map[string]string{"name": truncate(rt.name)})
	}
	return rt, nil
}

// parseDigest checks a digest from a request before it is used for
// anything (a path in the store above all): bounded length, a known
// algorithm, the exact number of hex digits.
func parseDigest(s string) (digest.Digest, *apiError) {
	if len(s) > maxDigestLen {
		return "", errf(http.StatusBadRequest, codeDigestInvalid, "digest too long", map[string]string{"digest": truncate(s)})
	}
	d := digest.Digest(s)
	if err := d.Validate(); err != nil {
		return "", errf(http.StatusBadRequest, codeDigestInvalid, "invalid digest", map[string]string{"digest": truncate(s)})
	}
	return d, nil
}

// isDigest tells a manifest reference that is a digest from a tag (a tag
// cannot contain ':').
func isDigest(ref string) bool { return strings.ContainsRune(ref, ':') }

// truncate bounds what of a hostile input goes back into a response or log.
func truncate(s string) string {
	const max = 128
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
