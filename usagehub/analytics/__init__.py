"""Analytics as an application service: series, features, segments, exports, pseudonyms."""
