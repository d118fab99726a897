package breaker_test

import (
	"fmt"
	"time"

	"github.com/agentictrust/atf/broker/breaker"
)

func Example() {
	now := time.Date(2026, time.March, 2, 10, 0, 0, 0, time.UTC)
	b := breaker.New(breaker.Config{Failures: 2, OpenFor: 10 * time.Second, Probes: 1}, func() time.Time { return now })

	// Two calls fail: the second opens the breaker.
	for range 2 {
		if ok, _, _ := b.Allow(); ok {
			from, to := b.Record(true)
			fmt.Println(from, "->", to)
		}
	}
	ok, state, retryAt := b.Allow()
	fmt.Println(ok, state, retryAt.Sub(now))

	// After OpenFor one call probes, and its success closes the breaker.
	now = now.Add(10 * time.Second)
	ok, state, _ = b.Allow()
	fmt.Println(ok, state)
	from, to := b.Record(false)
	fmt.Println(from, "->", to)
	// Output:
	// closed -> closed
	// closed -> open
	// false open 10s
	// true half-open
	// half-open -> closed
}
