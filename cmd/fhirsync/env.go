package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/storage"
)

// env is what every command shares: output streams, the environment, the
// global flags and, once loaded, the configuration.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string

	configPath string
	logFormat  string

	cfg    *Config
	log    *slog.Logger
	closer []func() error
}

func (e *env) globalFlags(fs *flag.FlagSet) {
	if fs.Lookup("config") != nil {
		return
	}
	fs.StringVar(&e.configPath, "config", e.configPath, "YAML configuration `file` (optional; FHIRSYNC_CONFIG)")
	fs.StringVar(&e.logFormat, "log-format", e.logFormat, "process log format: text or json (FHIRSYNC_LOG_FORMAT)")
}

// config loads and validates the configuration once.
func (e *env) config() (*Config, error) {
	if e.cfg != nil {
		return e.cfg, nil
	}
	path := e.configPath
	if path == "" {
		path = e.getenv("FHIRSYNC_CONFIG")
	}
	getenv := e.getenv
	if e.logFormat != "" {
		getenv = func(k string) string {
			if k == "FHIRSYNC_LOG_FORMAT" {
				return e.logFormat
			}
			return e.getenv(k)
		}
	}
	cfg, err := loadConfig(path, getenv)
	if err != nil {
		return nil, err
	}
	e.cfg = &cfg
	return e.cfg, nil
}

// logger returns the process logger (stderr, text or JSON). Process logs
// are for operators: stable snake_case keys, never PHI values.
func (e *env) logger() *slog.Logger {
	if e.log != nil {
		return e.log
	}
	format, level := e.logFormat, slog.LevelInfo
	if cfg, err := e.config(); err == nil {
		format = cfg.Log.Format
		_ = level.UnmarshalText([]byte(cfg.Log.Level))
	}
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		e.log = slog.New(slog.NewJSONHandler(e.stderr, opts))
	} else {
		e.log = slog.New(slog.NewTextHandler(e.stderr, opts))
	}
	return e.log
}

// openDB opens the configured database and applies pending migrations.
func (e *env) openDB(ctx context.Context) (*gorm.DB, error) {
	db, err := e.openDBNoMigrate(ctx)
	if err != nil {
		return nil, err
	}
	applied, err := storage.Migrate(ctx, db)
	if err != nil {
		return nil, fmt.Errorf("migrating %s: %w", e.describeDB(), err)
	}
	if len(applied) > 0 {
		e.logger().Info("database migrated", "database", e.describeDB(), "applied", applied, "schema_version", storage.LatestVersion())
	}
	return db, nil
}

func (e *env) openDBNoMigrate(ctx context.Context) (*gorm.DB, error) {
	cfg, err := e.config()
	if err != nil {
		return nil, err
	}
	db, err := storage.Open(ctx, cfg.Database.URL, storage.Options{DataDir: cfg.DataDir, MaxOpenConns: cfg.Database.MaxOpenConns,
		SQLiteSynchronous: cfg.Database.SQLiteSynchronous})
	if err != nil {
		return nil, err
	}
	e.closer = append(e.closer, func() error { return storage.Close(db) })
	return db, nil
}

func (e *env) describeDB() string {
	cfg, err := e.config()
	if err != nil {
		return "database"
	}
	return storage.Describe(cfg.Database.URL, storage.Options{DataDir: cfg.DataDir})
}

// close releases what the command opened.
func (e *env) close() {
	for i := len(e.closer) - 1; i >= 0; i-- {
		_ = e.closer[i]()
	}
	e.closer = nil
}
