package units

import "testing"

func TestSize(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 B", 999: "999 B", 1000: "1.0 kB", 65536: "65.5 kB",
		12_345_678: "12.3 MB", 1_500_000_000: "1.5 GB", -2000: "-2.0 kB",
	} {
		if got := Size(n); got != want {
			t.Errorf("Size(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestParse(t *testing.T) {
	for s, want := range map[string]int64{
		"4096": 4096, "64KiB": 65536, "64k": 65536, "1MiB": 1 << 20, "1 mib": 1 << 20,
		"64kB": 64000, "1MB": 1_000_000, "2GB": 2_000_000_000, "1GiB": 1 << 30, "10b": 10,
	} {
		got, err := Parse(s)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "0", "-1", "12XB", "KiB", "1.5MB", "99999999999GiB"} {
		if n, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) = %d, want an error", s, n)
		}
	}
}

func TestExactRoundTrips(t *testing.T) {
	for _, n := range []int64{1, 4096, 65536, 65537, 3 << 20, 5 << 30} {
		got, err := Parse(Exact(n))
		if err != nil || got != n {
			t.Errorf("Parse(Exact(%d)=%q) = %d, %v", n, Exact(n), got, err)
		}
	}
}
