package assignment

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

type vectors struct {
	Algorithm struct {
		Buckets int `json:"buckets"`
	} `json:"algorithm"`
	Cases []struct {
		Salt     string    `json:"salt"`
		UserID   string    `json:"user_id"`
		Variants []Variant `json:"variants"`
		Bucket   int       `json:"bucket"`
		Variant  string    `json:"variant"`
	} `json:"cases"`
	ChooseVariantCases []struct {
		Bucket   int       `json:"bucket"`
		Variants []Variant `json:"variants"`
		Variant  string    `json:"variant"`
	} `json:"choose_variant_cases"`
}

// loadVectors reads spec/assignment_test_vectors.json; MCPROUTER_SPEC_DIR
// overrides where spec/ is (the default is relative to this package).
func loadVectors(t *testing.T) vectors {
	t.Helper()
	dir := os.Getenv("MCPROUTER_SPEC_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "..", "spec")
	}
	data, err := os.ReadFile(filepath.Join(dir, "assignment_test_vectors.json"))
	if err != nil {
		t.Fatalf("read vectors: %v", err)
	}
	var v vectors
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("parse vectors: %v", err)
	}
	if v.Algorithm.Buckets != Buckets || len(v.Cases) == 0 || len(v.ChooseVariantCases) == 0 {
		t.Fatalf("unexpected vectors file: buckets %d, %d cases", v.Algorithm.Buckets, len(v.Cases))
	}
	return v
}

func TestVectorsBucketAndVariant(t *testing.T) {
	v := loadVectors(t)
	for _, c := range v.Cases {
		bucket, name, err := Assign(c.Salt, c.UserID, c.Variants)
		if err != nil || bucket != c.Bucket || name != c.Variant {
			t.Errorf("Assign(%q, %q) = %d, %q, %v; want %d, %q", c.Salt, c.UserID, bucket, name, err, c.Bucket, c.Variant)
		}
	}
	t.Logf("%d (salt, user) cases reproduced", len(v.Cases))
}

func TestVectorsChooseVariant(t *testing.T) {
	v := loadVectors(t)
	for _, c := range v.ChooseVariantCases {
		name, err := ChooseVariant(c.Bucket, c.Variants)
		if err != nil || name != c.Variant {
			t.Errorf("ChooseVariant(%d, %v) = %q, %v; want %q", c.Bucket, c.Variants, name, err, c.Variant)
		}
	}
	t.Logf("%d bucket-boundary cases reproduced", len(v.ChooseVariantCases))
}

func TestInvalidInput(t *testing.T) {
	for _, weights := range [][]int64{nil, {0, 50}, {10001}} {
		if _, err := BucketBounds(weights); err == nil {
			t.Errorf("BucketBounds(%v) accepted", weights)
		}
	}
	for _, bucket := range []int{-1, Buckets} {
		if _, err := ChooseVariant(bucket, []Variant{{"a", 1}}); err == nil {
			t.Errorf("ChooseVariant(%d) accepted", bucket)
		}
	}
}
