"""pKVM's restricted DMA pool played on the model under any design.

`dma_pool.share_pool` shares a guest's pool page by page and gives pages back
(what the host reached, what it cost); `pkvm_pool` plays the same pool in one
memslot and in one memslot per unit (the memslot-limit workaround).  See
docs/API.md and examples/.
"""
