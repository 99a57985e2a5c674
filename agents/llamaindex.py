"""engramma inside LlamaIndex: a retriever over `recall`, and a memory block for `llama_index.core.memory.Memory`.

    from llama_index.core.memory import Memory as ChatMemory
    from engramma.agents.llamaindex import EngrammaMemoryBlock, EngrammaRetriever

    retriever = EngrammaRetriever(mem, scope="user:alice", k=5)          # nodes with scores, for any engine
    chat = ChatMemory.from_defaults(memory_blocks=[EngrammaMemoryBlock(memory=mem, scope="user:alice")])

Needs llama-index-core (`pip install 'engramma[llamaindex]'`). Unlike LlamaIndex's FAISS vector stores, recall
keeps the text, the metadata and the scope filter: another user's items are never searched.
"""
from __future__ import annotations

from typing import Any, List, Optional

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import Field
from llama_index.core.memory.memory import BaseMemoryBlock
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from engramma.agents.context import approximate_tokens, context_block
from engramma.memory import Hit, Item, Memory


def _node(hit: Hit) -> NodeWithScore:
    item = hit.item
    metadata = {"kind": item.kind.value, "scope": item.scope, "source": item.source, "key": item.key,
                "ts": item.ts.isoformat() if item.ts else None}
    return NodeWithScore(node=TextNode(text=item.text, id_=f"engramma-{hit.id}",
                                       metadata={k: v for k, v in metadata.items() if v is not None}),
                         score=hit.score)


class EngrammaRetriever(BaseRetriever):
    """Retrieves from an engramma store: current items of `scope` and the shared scopes, best first."""

    def __init__(self, memory: Memory, *, scope: str = "global", k: int = 5, **kwargs: Any):
        super().__init__(**kwargs)
        self._memory, self._scope, self._k = memory, scope, k

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        return [_node(hit) for hit in self._memory.recall(query_bundle.query_str, k=self._k, scope=self._scope)]


class EngrammaMemoryBlock(BaseMemoryBlock[str]):
    """Long-term memory for LlamaIndex's `Memory`: `aget` recalls what is relevant to the latest user message
    (within a token budget); `aput` observes the messages LlamaIndex moves out of short-term memory, as
    conversation items that the store's policy routes like any other."""

    name: str = Field(default="engramma", description="The name of the memory block.")
    memory: Memory = Field(description="An open engramma Memory.")
    scope: str = Field(default="global", description="Whose memory: recall sees it and the shared scopes.")
    budget_tokens: int = Field(default=300, description="Most tokens the recalled block may take.")
    k: int = Field(default=10, description="Items recalled before the budget is applied.")

    async def _aget(self, messages: Optional[List[ChatMessage]] = None, **block_kwargs: Any) -> str:
        query = next((m.content for m in reversed(messages or []) if m.role.value == "user" and m.content), None)
        if not query:
            return ""
        return context_block(self.memory, query, scope=self.scope, budget_tokens=self.budget_tokens, k=self.k,
                             count_tokens=approximate_tokens)

    async def _aput(self, messages: List[ChatMessage]) -> None:
        items = [Item(text=f"{m.role.value}: {m.content}", kind="conversation", scope=self.scope,
                      source="agent" if m.role.value == "assistant" else "chat", meta={"role": m.role.value})
                 for m in messages if m.content and m.content.strip()]
        if items:
            self.memory.observe_many(items)
