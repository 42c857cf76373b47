package main

import (
	"context"
	"errors"
)

func runMaps(ctx context.Context, e *env, args []string) error {
	return errors.New("the maps command is not part of this build yet")
}
