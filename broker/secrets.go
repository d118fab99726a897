package broker

import (
	"fmt"
	"os"
	"strings"
)

// readSecret reads a secret from a file or, if no file is named, from an
// environment variable.
func readSecret(file, env string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("broker: vault token: %w", err)
		}
		if v := strings.TrimSpace(string(b)); v != "" {
			return v, nil
		}
		return "", fmt.Errorf("broker: vault token file %s is empty", file)
	}
	if v := os.Getenv(env); v != "" {
		return v, nil
	}
	return "", fmt.Errorf("broker: vault token: environment variable %s is empty", env)
}
