package main

import (
	"context"
	"errors"
)

func runLogs(ctx context.Context, e *env, args []string) error {
	return errors.New("the logs command is not part of this build yet")
}
