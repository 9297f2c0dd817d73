"""The seam on kafka-python (pure Python): `producer`, `consumer` and `admin`, each one of the
seam's interfaces, and `common`, what the three share. How the consumer keeps the seam's
promise of callbacks on the polling thread is told in `consumer`."""
