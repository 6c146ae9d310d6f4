// The published assignment vectors (spec/assignment_test_vectors.json), all
// reproduced offline: no server needed.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import { assign, bucketBounds, bucketOf, BUCKETS, chooseVariant, type WeightedVariant } from "../src/assignment.js";

interface Vectors {
  algorithm: { buckets: number };
  cases: { salt: string; user_id: string; variants: WeightedVariant[]; bucket: number; variant: string }[];
  choose_variant_cases: { bucket: number; variants: WeightedVariant[]; variant: string }[];
}

const vectorsPath = new URL("../../../spec/assignment_test_vectors.json", import.meta.url);
const vectors = JSON.parse(readFileSync(vectorsPath, "utf8")) as Vectors;

describe("assignment test vectors", () => {
  test("the vectors use the same bucket count", () => {
    assert.equal(vectors.algorithm.buckets, BUCKETS);
    assert.ok(vectors.cases.length > 0 && vectors.choose_variant_cases.length > 0);
  });

  test(`bucket and variant of all ${vectors.cases.length} (salt, user) cases`, () => {
    for (const c of vectors.cases) {
      const label = JSON.stringify({ salt: c.salt, user_id: c.user_id });
      assert.equal(bucketOf(c.salt, c.user_id), c.bucket, `bucket of ${label}`);
      assert.deepEqual(assign(c.salt, c.user_id, c.variants), { bucket: c.bucket, variant: c.variant }, label);
    }
  });

  test(`variant of all ${vectors.choose_variant_cases.length} bucket-boundary cases`, () => {
    for (const c of vectors.choose_variant_cases) {
      assert.equal(chooseVariant(c.bucket, c.variants), c.variant, JSON.stringify(c));
    }
  });

  test("invalid input is rejected like the server does", () => {
    assert.throws(() => bucketBounds([]), RangeError);
    assert.throws(() => bucketBounds([0, 50]), RangeError);
    assert.throws(() => bucketBounds([10_001]), RangeError);
    assert.throws(() => bucketBounds([1.5]), RangeError);
    assert.throws(() => chooseVariant(BUCKETS, [{ name: "a", weight: 1 }]), RangeError);
    assert.throws(() => chooseVariant(-1, [{ name: "a", weight: 1 }]), RangeError);
    assert.equal(bucketBounds([1, 1, 1]).at(-1), BUCKETS);
  });
});
