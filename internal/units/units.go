// Package units is the one way Blockfile prints and parses byte counts, so
// every verb, progress line and message speaks the same units.
package units

import (
	"fmt"
	"strconv"
	"strings"
)

// Size formats n bytes in decimal (SI) units with one decimal, like docker
// and buildx: "512 B", "65.5 kB", "12.3 MB", "1.2 GB".
func Size(n int64) string {
	const unit = 1000
	if n < 0 {
		return "-" + Size(-n)
	}
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTPE"[exp])
}

// Parse parses a size given on a command line: a plain byte count (4096), a
// binary unit (16KiB, 1MiB, 1GiB; also k, m, g) or a decimal one (64kB, 1MB,
// 1GB, as Size prints). Case and a space before the unit do not matter.
func Parse(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToLower(s))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{
		{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30},
		{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9},
		{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"b", 1},
	} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a positive size (examples: 64KiB, 1MiB, 4096)", s)
	}
	return n * mult, nil
}

// Exact prints n in the largest binary unit that divides it (64KiB, 1MiB),
// else in bytes: for flag defaults, which Parse must read back unchanged.
func Exact(n int64) string {
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}
