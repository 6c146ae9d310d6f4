/**
 * Deterministic experiment assignment, the same answer as the server's
 * (`service/mcprouter/server/postgres/assignment.py`) and every other client.
 *
 * ```text
 * digest  = SHA-256( UTF-8( salt + ":" + user_id ) )
 * bucket  = uint64_big_endian( digest[0:8] ) mod 10000
 * total   = w[0] + ... + w[n-1]
 * upper_i = floor(10000 * (w[0] + ... + w[i]) / total)
 * variant = the first i (in the experiment's order) with bucket < upper_i
 * ```
 *
 * The 64-bit integer is read as a `BigInt` (a JavaScript `number` loses bits
 * above 2^53); the weight arithmetic stays below 2^53 (weights are at most
 * 10000 each), so plain integer division with `Math.floor` is exact there.
 * Test vectors: `spec/assignment_test_vectors.json` at the repository root.
 *
 * @module
 */
import { createHash } from "node:crypto";

/** Number of buckets a user id hashes into. */
export const BUCKETS = 10_000;
/** Smallest valid variant weight. */
export const MIN_WEIGHT = 1;
/** Largest valid variant weight. */
export const MAX_WEIGHT = 10_000;

/** A variant name and its integer weight, as in `mcprouter.v1.Variant`. */
export interface WeightedVariant {
  /** Variant name. */
  readonly name: string;
  /** Integer weight in `MIN_WEIGHT..MAX_WEIGHT`. */
  readonly weight: number;
}

/** The user's bucket in `0..BUCKETS-1` for an experiment's salt. */
export function bucketOf(salt: string, userId: string): number {
  const digest = createHash("sha256").update(`${salt}:${userId}`, "utf8").digest();
  return Number(digest.readBigUInt64BE(0) % BigInt(BUCKETS));
}

/**
 * The exclusive upper bucket bound of each variant, in order; the last is
 * `BUCKETS`. Throws `RangeError` for no weights or a weight out of range.
 */
export function bucketBounds(weights: readonly number[]): number[] {
  if (weights.length === 0) {
    throw new RangeError("an experiment needs at least one variant");
  }
  for (const weight of weights) {
    if (!Number.isInteger(weight) || weight < MIN_WEIGHT || weight > MAX_WEIGHT) {
      throw new RangeError(`weight must be an integer in ${MIN_WEIGHT}..${MAX_WEIGHT}, got ${weight}`);
    }
  }
  const total = weights.reduce((sum, weight) => sum + weight, 0);
  let cumulative = 0;
  return weights.map((weight) => {
    cumulative += weight;
    return Math.floor((BUCKETS * cumulative) / total);
  });
}

/** The name of the variant owning `bucket` (cumulative weights, integer arithmetic). */
export function chooseVariant(bucket: number, variants: readonly WeightedVariant[]): string {
  if (!Number.isInteger(bucket) || bucket < 0 || bucket >= BUCKETS) {
    throw new RangeError(`bucket must be in 0..${BUCKETS - 1}, got ${bucket}`);
  }
  const bounds = bucketBounds(variants.map((variant) => variant.weight));
  for (let i = 0; i < variants.length; i++) {
    if (bucket < bounds[i]!) {
      return variants[i]!.name;
    }
  }
  throw new Error("unreachable: the last bound is BUCKETS");
}

/** Bucket and variant of a user in an experiment, in one call. */
export function assign(
  salt: string,
  userId: string,
  variants: readonly WeightedVariant[],
): { bucket: number; variant: string } {
  const bucket = bucketOf(salt, userId);
  return { bucket, variant: chooseVariant(bucket, variants) };
}
