//go:build race

package layer

// raceEnabled: the race detector is on (its shadow memory makes heap
// figures meaningless, and deflate ten times slower).
const raceEnabled = true
