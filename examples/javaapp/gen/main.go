// Command gen writes the build context of examples/javaapp: app.jar and a
// libs/ folder of dependency jars, as a typical Java service ships them. The
// jars are real zip files (a manifest plus "class" entries) whose contents are
// derived only from their name and version, so every run writes the same
// bytes. Entries are stored, not deflated, so the output does not depend on
// the Go version's compressor; the pseudo-random class bytes are
// incompressible, like real jars.
//
// Version v2 is v1 with one dependency bumped (jackson-databind 2.17.0 ->
// 2.17.1, a different file name and content) and a new app.jar.
//
// Usage: go run ./examples/javaapp/gen -version v1 -out DIR
package main

import (
	"archive/zip"
	"crypto/sha256"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"
)

// lib is one dependency jar: name-version.jar of about size bytes.
type lib struct {
	name, version string
	size          int
}

// libs are the v1 dependencies, sized like their real namesakes (in total
// about 16 MB).
var libs = []lib{
	{"spring-core", "6.1.5", 1_900_000},
	{"spring-beans", "6.1.5", 850_000},
	{"spring-context", "6.1.5", 1_300_000},
	{"spring-web", "6.1.5", 1_900_000},
	{"jackson-core", "2.17.0", 580_000},
	{"jackson-databind", "2.17.0", 1_650_000},
	{"jackson-annotations", "2.17.0", 78_000},
	{"slf4j-api", "2.0.12", 68_000},
	{"logback-classic", "1.5.3", 300_000},
	{"logback-core", "1.5.3", 600_000},
	{"commons-lang3", "3.14.0", 660_000},
	{"commons-io", "2.15.1", 500_000},
	{"guava", "33.1.0-jre", 3_000_000},
	{"snakeyaml", "2.2", 330_000},
	{"HikariCP", "5.1.0", 160_000},
	{"postgresql", "42.7.3", 1_090_000},
	{"micrometer-core", "1.12.4", 840_000},
	{"jakarta.annotation-api", "2.1.1", 26_000},
}

// bumps are the dependency changes of each version after v1.
var bumps = map[string]map[string]string{
	"v2": {"jackson-databind": "2.17.1"},
}

// appVersions is app.jar's version per example version.
var appVersions = map[string]string{"v1": "1.0.0", "v2": "1.0.1"}

// epoch is every zip entry's modification time.
var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

func main() {
	version := flag.String("version", "v1", "example version: v1 or v2")
	out := flag.String("out", "", "output directory (created; existing jars are overwritten)")
	flag.Parse()
	if *out == "" || appVersions[*version] == "" {
		fmt.Fprintln(os.Stderr, "usage: gen -version v1|v2 -out DIR")
		os.Exit(2)
	}
	if err := generate(*out, *version); err != nil {
		fmt.Fprintf(os.Stderr, "gen: %v\n", err)
		os.Exit(1)
	}
}

func generate(out, version string) error {
	libDir := filepath.Join(out, "libs")
	if err := os.MkdirAll(libDir, 0o755); err != nil {
		return err
	}
	// Remove jars of other versions so a reused directory holds exactly this one.
	old, _ := filepath.Glob(filepath.Join(libDir, "*.jar"))
	for _, f := range old {
		if err := os.Remove(f); err != nil {
			return err
		}
	}
	var classpath []string
	for _, l := range libs {
		if v, ok := bumps[version][l.name]; ok {
			l.version = v
		}
		file := l.name + "-" + l.version + ".jar"
		classpath = append(classpath, "libs/"+file)
		if err := writeJar(filepath.Join(libDir, file), l.name, l.version, l.size, ""); err != nil {
			return err
		}
	}
	app := appVersions[version]
	cp := "Class-Path:"
	for _, c := range classpath {
		cp += " " + c
	}
	manifestExtra := "Main-Class: com.example.orders.Main\n" + wrapManifestLine(cp)
	return writeJar(filepath.Join(out, "app.jar"), "orders-service", app, 465_000, manifestExtra)
}

// writeJar writes a jar of about size bytes whose content depends only on
// name, version and manifestExtra. It writes a temp file and renames it.
func writeJar(path, name, version string, size int, manifestExtra string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".gen-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	zw := zip.NewWriter(tmp)
	manifest := "Manifest-Version: 1.0\nCreated-By: blockfile examples/javaapp/gen\n" +
		"Implementation-Title: " + name + "\nImplementation-Version: " + version + "\n" + manifestExtra
	if err := addEntry(zw, "META-INF/MANIFEST.MF", []byte(manifest)); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	seed := sha256.Sum256([]byte(name + "@" + version))
	rng := rand.New(rand.NewChaCha8(seed))
	// Classes of 2-40 KB until the jar reaches size.
	for i, written := 0, 0; written < size; i++ {
		n := min(2_000+rng.IntN(38_000), size-written)
		body := make([]byte, n)
		for j := 0; j+8 <= n; j += 8 {
			binary.LittleEndian.PutUint64(body[j:], rng.Uint64())
		}
		// Class files start with 0xCAFEBABE.
		copy(body, []byte{0xCA, 0xFE, 0xBA, 0xBE})
		entry := fmt.Sprintf("com/example/%s/C%04d.class", sanitize(name), i)
		if err := addEntry(zw, entry, body); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		written += n
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	// A fixed mtime keeps the image layers that COPY these files reproducible.
	if err := os.Chtimes(tmp.Name(), epoch, epoch); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func addEntry(zw *zip.Writer, name string, body []byte) error {
	w, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Store, Modified: epoch})
	if err != nil {
		return err
	}
	_, err = io.Writer.Write(w, body)
	return err
}

// sanitize turns a jar name into a Java package segment.
func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	return string(b)
}

// wrapManifestLine splits a manifest header into lines of at most 72 bytes,
// continuation lines starting with a space, as the jar specification requires.
func wrapManifestLine(s string) string {
	out, limit := "", 72
	for len(s) > limit {
		out += s[:limit] + "\n "
		s = s[limit:]
		limit = 71
	}
	return out + s + "\n"
}
