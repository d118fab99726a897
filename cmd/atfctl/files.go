package main

import (
	"os"
	"path/filepath"
)

// publish makes f, a finished temporary file, the file at path: synced,
// closed, renamed over path, and the rename made durable. Readers of path
// see the old file or the new one, never a part.
func publish(f *os.File, path string) error {
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync()
}

// writeFileAtomic replaces path with data through a temporary file in the
// same directory, readable only by its owner (0600).
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*") // created 0600
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if err := publish(f, path); err != nil {
		os.Remove(f.Name())
		return err
	}
	return nil
}
