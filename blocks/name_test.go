package blocks

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"app:v1", "v1", "registry.local:5000/team/app:1.2", "example.test/app@sha256:" + strings.Repeat("a", 64)} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "..", ".", "../x", "/abs", "a/../../b", "app:v1\x1b[2J", "a b", "a\nb", "App", strings.Repeat("a", 600)} {
		err := ValidateName(bad)
		if !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalidName", bad, err)
			continue
		}
		if strings.ContainsAny(err.Error(), "\x1b\n") {
			t.Errorf("ValidateName(%q): the error prints the name raw: %q", bad, err)
		}
	}
}

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{
		"app:v1":           "app:v1",
		"":                 `""`,
		"evil\x1b[31mred":  `"evil\x1b[31mred"`,
		"a b":              `"a b"`,
		"rtl\u202egnp.exe": `"rtl\u202egnp.exe"`,
		"bad\xffutf8":      `"bad\xffutf8"`,
		`say "hi"`:         `"say \"hi\""`,
		"café":             "café",
	} {
		if got := Quote(in); got != want {
			t.Errorf("Quote(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestSanitize(t *testing.T) {
	for in, want := range map[string]string{
		"line one\n\tline two":  "line one\n\tline two",
		"tag \x1b]0;pwned\x07!": `tag \x1b]0;pwned\a!`,
		"bad\xffutf8 \r":        `bad\xffutf8 \r`,
		"rtl\u202e":             `rtl\u202e`,
	} {
		if got := Sanitize(in); got != want {
			t.Errorf("Sanitize(%q) = %q, want %q", in, got, want)
		}
	}
}
