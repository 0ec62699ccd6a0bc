package main

import (
	"context"
	"log/slog"
	"slices"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// zapLog is etcd's zap logger writing into a slog logger, netd's format
// (not JSON lines between netd's), errors only (its warnings are
// about settings netd chose, and slow requests), no stack traces, each line with component=etcd. Once netd stops the
// server (Closing), its complaints about the listeners it is closing
// ("use of closed network connection", "server closed") are expected
// and go to debug: a clean stop is quiet.
type zapLog struct {
	log     *slog.Logger
	fields  []zapcore.Field
	closing *atomic.Bool
}

func newZapLog(log *slog.Logger) *zapLog {
	return &zapLog{log: log.With("component", "etcd"), closing: new(atomic.Bool)}
}

// Logger is the zap logger to give the embedded etcd.
func (c *zapLog) Logger() *zap.Logger { return zap.New(c) }

// Closing says that the server is being stopped.
func (c *zapLog) Closing() { c.closing.Store(true) }

func (c *zapLog) Enabled(l zapcore.Level) bool {
	return l >= zapcore.ErrorLevel && c.log.Enabled(context.Background(), c.level(l))
}

func (c *zapLog) With(fields []zapcore.Field) zapcore.Core {
	return &zapLog{log: c.log, fields: append(slices.Clip(c.fields), fields...), closing: c.closing}
}

func (c *zapLog) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *zapLog) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range append(slices.Clip(c.fields), fields...) {
		f.AddTo(enc)
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	attrs := make([]any, 0, 2*len(keys))
	for _, k := range keys {
		attrs = append(attrs, k, enc.Fields[k])
	}
	c.log.Log(context.Background(), c.level(e.Level), e.Message, attrs...)
	return nil
}

func (c *zapLog) Sync() error { return nil }

// level maps zap's levels to slog's; all are debug while closing.
func (c *zapLog) level(l zapcore.Level) slog.Level {
	switch {
	case c.closing.Load():
		return slog.LevelDebug
	}
	return slog.LevelError
}
