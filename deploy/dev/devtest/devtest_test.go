package devtest_test

import (
	"testing"

	"github.com/agentictrust/atf/deploy/dev/devtest"
)

func TestMain(m *testing.M) { devtest.Main(m) }

func TestShared(t *testing.T) {
	s := devtest.Shared(t)
	t.Run("same stack", func(t *testing.T) {
		if again := devtest.Shared(t); again != s {
			t.Errorf("second Shared call gave another stack")
		}
	})
	health, err := s.VaultClient().Sys().HealthWithContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !health.Initialized || health.Sealed {
		t.Errorf("Vault health %+v, want initialized and unsealed", health)
	}
}
