"""A batch example: count the primes below a limit (sieve of Eratosthenes) and print it."""
import os

limit = int(os.environ["PRIMES_LIMIT"])
sieve = bytearray([1]) * limit
sieve[:2] = b"\0\0"[:limit]
for n in range(2, int(limit ** 0.5) + 1):
    if sieve[n]:
        sieve[n * n::n] = bytes(len(range(n * n, limit, n)))
print(f"primes below {limit}: {sum(sieve)}")
