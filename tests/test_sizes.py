"""The one size grammar (shoal.sizes): Kubernetes quantities and byte units, bounded to 64 bits."""

from __future__ import annotations

import pytest

from shoal.sizes import MAX_BYTES, SizeError, format_size, parse_size

MiB = 2**20


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2GiB", 2 * 2**30),
        ("512Mi", 512 * MiB),
        ("1.5GB", 1_500_000_000),
        ("1000", 1000),
        (" 64 mib ", 64 * MiB),
        (1024, 1024),
        ("16Gi", 16 * 2**30),
        ("1.5G", 1_500_000_000),
        ("2e9", 2_000_000_000),
        ("100k", 100_000),
        ("1E", 10**18),
        ("0.5Ki", 512),
        ("1.0001", 2),  # fractions of a byte round up, as Kubernetes rounds quantities
    ],
)
def test_sizes_read_kubernetes_quantities_and_byte_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "2 parsecs", "-1GiB", "GiB", "3Qi", "2e9Mi", True])
def test_unreadable_sizes_name_the_input_and_say_how_to_write_one(text):
    with pytest.raises(SizeError, match=r"spec.memory=.*e\.g\. 2GiB"):
        parse_size(text, "spec.memory")


def test_milli_is_refused_rather_than_read_as_mega():
    with pytest.raises(SizeError, match="milli"):
        parse_size("500m", "--memory-budget")


@pytest.mark.parametrize("text", ["99999999999999999999Ei", "9Ei", str(MAX_BYTES + 1), -1])
def test_sizes_beyond_a_64_bit_field_or_negative_are_refused(text):
    with pytest.raises(SizeError, match="spec.memoryPerReplica"):
        parse_size(text, "spec.memoryPerReplica")


def test_the_largest_64_bit_size_is_accepted():
    assert parse_size(str(MAX_BYTES)) == MAX_BYTES


def test_format_size_is_readable():
    assert format_size(512) == "512 B"
    assert format_size(3 * MiB // 2) == "1.5 MiB"
    assert format_size(5 * 2**40) == "5120.0 GiB"
