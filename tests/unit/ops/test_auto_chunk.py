from recoverlm.ops.chunked import AUTO_CHUNK, auto_chunk


def test_auto_chunk_starts_at_a_gibibyte_of_logits():
    assert auto_chunk(4096, 151_936) == AUTO_CHUNK  # 2.3 GiB of float32 logits
    assert auto_chunk(1024, 151_936) == 0  # 0.6 GiB
    assert auto_chunk(8 * 64, 49_152) == 0  # the embedded model's batch
    at = -(-(2**30) // (4 * 1000))  # the fewest positions whose logits reach 1 GiB at vocabulary 1000
    assert auto_chunk(at, 1000) == AUTO_CHUNK
    assert auto_chunk(at - 1, 1000) == 0
