package blocks

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/distribution/reference"
)

// ErrInvalidName: an image name is not a valid image reference.
var ErrInvalidName = errors.New("invalid image name")

// MaxNameLength bounds an image name (a tag in the store, a name in a
// bundle): a repository name may have 255 characters, a tag 128, a digest
// 71 for sha256 and more for other algorithms.
const MaxNameLength = 512

// ValidateName checks that name, which came from a command line, a bundle,
// an OCI layout's index.json or a registry, is an image reference
// (`[registry/]path[:tag][@digest]`, as docker and containerd accept it, e.g.
// "app:v1", "registry.local:5000/team/app:1.2"), before it is used as a tag,
// printed or put in an output path. A reference has no "..", "/" at either
// end, whitespace or control characters, so such a name can neither leave a
// directory nor drive a terminal. The error wraps ErrInvalidName and shows
// the name quoted (Quote).
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("image name is empty: %w", ErrInvalidName)
	}
	if len(name) > MaxNameLength {
		return fmt.Errorf("image name %s...: %d bytes, limit %d: %w", Quote(name[:64]), len(name), MaxNameLength, ErrInvalidName)
	}
	if _, err := reference.ParseNormalizedNamed(name); err != nil {
		// The parser's message repeats the name raw.
		return fmt.Errorf("image name %s: %w (%s)", Quote(name), ErrInvalidName, Sanitize(err.Error()))
	}
	return nil
}

// Quote returns s as every blockfile printer shows text that came from
// outside (image names, tags, paths): s itself when it is made of printable
// characters and holds no quote, backslash or space, else s as a Go
// double-quoted string, in which control characters (terminal escapes),
// invalid UTF-8 and invisible formatting characters appear as \x1b, \u202e,
// ... So a name can never move the cursor, recolour the terminal or hide
// what follows it, and a quoted name cannot be mistaken for another one.
func Quote(s string) string {
	if s != "" && strings.IndexFunc(s, needsQuote) < 0 {
		return s
	}
	return strconv.Quote(s)
}

func needsQuote(r rune) bool {
	return r == '"' || r == '\\' || r == ' ' || r == unicode.ReplacementChar || !unicode.IsPrint(r)
}

// Sanitize returns a message (an error, a line of output) safe for a
// terminal: newlines and tabs are kept, every other character that Quote
// would escape is written as its Go escape (\x1b, \u202e, ...) and invalid
// UTF-8 as \xNN. It is the last line of defence for text that embeds a name
// not passed through Quote.
func Sanitize(s string) string {
	if strings.IndexFunc(s, unsafeRune) < 0 && !strings.ContainsRune(s, unicode.ReplacementChar) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == unicode.ReplacementChar && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unsafeRune(r):
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

func unsafeRune(r rune) bool {
	return r != '\n' && r != '\t' && r != unicode.ReplacementChar && !unicode.IsPrint(r) && r != ' '
}
