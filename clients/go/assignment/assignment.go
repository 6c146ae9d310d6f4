// Package assignment reproduces mcp-router's deterministic experiment
// assignment, the same answer as the server and every other client:
//
//	digest  = SHA-256( UTF-8( salt + ":" + user_id ) )
//	bucket  = uint64_big_endian( digest[0:8] ) mod 10000
//	total   = w[0] + ... + w[n-1]
//	upper_i = floor(10000 * (w[0] + ... + w[i]) / total)
//	variant = the first i (in the experiment's order) with bucket < upper_i
//
// Integer arithmetic only; weights are integers in 1..10000. Test vectors:
// spec/assignment_test_vectors.json at the repository root.
package assignment

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

const (
	// Buckets is the number of buckets a user id hashes into.
	Buckets = 10000
	// MinWeight is the smallest valid variant weight.
	MinWeight = 1
	// MaxWeight is the largest valid variant weight.
	MaxWeight = 10000
)

// Variant is a variant name and its integer weight.
type Variant struct {
	Name   string `json:"name"`
	Weight int64  `json:"weight"`
}

// BucketOf is the user's bucket in 0..Buckets-1 for an experiment's salt.
func BucketOf(salt, userID string) int {
	digest := sha256.Sum256([]byte(salt + ":" + userID))
	return int(binary.BigEndian.Uint64(digest[:8]) % Buckets)
}

// BucketBounds is the exclusive upper bucket bound of each variant, in order;
// the last is Buckets.
func BucketBounds(weights []int64) ([]int, error) {
	if len(weights) == 0 {
		return nil, errors.New("an experiment needs at least one variant")
	}
	var total int64
	for _, w := range weights {
		if w < MinWeight || w > MaxWeight {
			return nil, fmt.Errorf("weight must be in %d..%d, got %d", MinWeight, MaxWeight, w)
		}
		total += w
	}
	bounds := make([]int, len(weights))
	var cumulative int64
	for i, w := range weights {
		cumulative += w
		bounds[i] = int(Buckets * cumulative / total)
	}
	return bounds, nil
}

// ChooseVariant is the name of the variant owning bucket.
func ChooseVariant(bucket int, variants []Variant) (string, error) {
	if bucket < 0 || bucket >= Buckets {
		return "", fmt.Errorf("bucket must be in 0..%d, got %d", Buckets-1, bucket)
	}
	weights := make([]int64, len(variants))
	for i, v := range variants {
		weights[i] = v.Weight
	}
	bounds, err := BucketBounds(weights)
	if err != nil {
		return "", err
	}
	for i, upper := range bounds {
		if bucket < upper {
			return variants[i].Name, nil
		}
	}
	return "", errors.New("unreachable: the last bound is Buckets")
}

// Assign is the bucket and variant of a user in an experiment.
func Assign(salt, userID string, variants []Variant) (int, string, error) {
	bucket := BucketOf(salt, userID)
	name, err := ChooseVariant(bucket, variants)
	return bucket, name, err
}
