// Package version says which build of Blockfile is running: the module
// version, the commit, the format version and the Go version, for
// `blockfile version` and the frontend's log.
package version

import (
	"runtime"
	"runtime/debug"

	"github.com/blockfile/blockfile/blocks"
	"github.com/blockfile/blockfile/blocks/bundle"
)

// Set at release time with
//
//	-ldflags '-X github.com/blockfile/blockfile/internal/version.Version=v1.2.3 -X ...Commit=<hash>'
//
// (the Makefile does); left empty, Get falls back to the build information
// the Go toolchain records.
var (
	Version string
	Commit  string
)

// Info is what `blockfile version --json` prints.
type Info struct {
	Version        string `json:"version"`                  // module version: a tag, a pseudo-version, or "(devel)"
	Commit         string `json:"commit,omitempty"`         // VCS revision the binary was built from
	Modified       bool   `json:"modified,omitempty"`       // built from a work tree with uncommitted changes
	FormatVersion  int    `json:"formatVersion"`            // docs/FORMAT.md (blocks.FormatVersion)
	BundleVersion  int    `json:"bundleVersion"`            // docs/BUNDLES.md header version
	GoVersion      string `json:"goVersion"`                // toolchain that built the binary
	Platform       string `json:"platform"`                 // GOOS/GOARCH
	BuildkitModule string `json:"buildkitModule,omitempty"` // github.com/moby/buildkit version linked in
}

// Get returns the running binary's version information: ldflags first, then
// debug.ReadBuildInfo (module version for `go install ...@v1.2.3`, VCS
// stamps for a build inside a git checkout).
func Get() Info {
	info := Info{
		Version:       Version,
		Commit:        Commit,
		FormatVersion: blocks.FormatVersion,
		BundleVersion: bundle.Version,
		GoVersion:     runtime.Version(),
		Platform:      runtime.GOOS + "/" + runtime.GOARCH,
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		if info.Version == "" {
			info.Version = "(unknown)"
		}
		return info
	}
	if info.Version == "" {
		info.Version = bi.Main.Version
	}
	if info.Version == "" {
		info.Version = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			if info.Commit == "" {
				info.Commit = s.Value
			}
		case "vcs.modified":
			// Only trusted with the revision it belongs to: an ldflags
			// commit says nothing about the work tree.
			if Commit == "" {
				info.Modified = s.Value == "true"
			}
		}
	}
	for _, d := range bi.Deps {
		if d.Path == "github.com/moby/buildkit" {
			info.BuildkitModule = d.Version
			if d.Replace != nil {
				info.BuildkitModule = d.Replace.Version
			}
		}
	}
	return info
}
