package breaker_test

import (
	"testing"
	"time"

	"github.com/agentictrust/atf/broker/breaker"
)

func TestBurst(t *testing.T) {
	// Events at these seconds; a burst is 3 within 10s.
	tests := []struct {
		at   []int
		want []bool
	}{
		{[]int{0, 1, 2}, []bool{false, false, true}},
		{[]int{0, 5, 11, 12, 30}, []bool{false, false, false, true, false}},
		{[]int{0, 10, 10, 20, 20}, []bool{false, false, true, true, true}},
	}
	for _, tt := range tests {
		var r breaker.Burst
		for i, s := range tt.at {
			if got := r.Add(t0.Add(time.Duration(s)*time.Second), 3, 10*time.Second); got != tt.want[i] {
				t.Errorf("events at %v: Add #%d = %v, want %v", tt.at, i, got, tt.want[i])
			}
		}
	}
}
