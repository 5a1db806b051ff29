"""Collections: the agrame schema kept as a collection property, the passage and
token collections with their indexes, aliases, listing and dropping."""

from __future__ import annotations

import json
from typing import Any

from pymilvus import DataType, MilvusClient

from ...errors import InvalidSchemaError, SchemaMismatchError, UnsupportedOperationError
from ...schema import CollectionSchema
from .base import MilvusBase
from .layout import (
    F,
    LAYOUT_FORMAT,
    MAX_DIM,
    MAX_VARCHAR,
    PROPERTY,
    STRUCT_MAX_TOKENS,
    TOK,
    TOKEN_BITS,
    TOKENS_SUFFIX,
    _has_lexical_fields,
    _has_struct_field,
    _vector_index,
)
from .lexical import MAX_TERMS, sparse_index


class Collections(MilvusBase):
    """Creating, describing, aliasing and dropping collections."""

    def _load_schema(self, name: str) -> CollectionSchema | None:
        if name.endswith(TOKENS_SUFFIX) or not self._call(self._client.has_collection, name):
            return None
        desc = self._call(self._client.describe_collection, name)
        if desc.get("collection_name", name) != name:
            return None  # ``name`` is an alias (Milvus answers for its collection)
        raw = (desc.get("properties") or {}).get(PROPERTY)
        if raw is None:
            raise SchemaMismatchError(
                f"collection {name!r} in {self._where} was not created by agrame-vdb (no {PROPERTY!r} property)"
            )
        try:
            meta = json.loads(raw)
            schema = CollectionSchema.from_json(meta["schema"])
            layout = meta.get("layout", "tokens")
        except (ValueError, KeyError, TypeError) as exc:
            raise SchemaMismatchError(f"collection {name!r} has an unreadable {PROPERTY!r} property: {raw!r}") from exc
        if schema.lexical is not None and not _has_lexical_fields(desc):
            raise SchemaMismatchError(
                f"collection {name!r} should hold lexical vectors in the fields {F.LEX!r}, {F.TERMS!r} and "
                f"{F.NTERMS!r}, but the server reports no such fields"
            )
        if layout == "struct" and not _has_struct_field(desc):
            raise SchemaMismatchError(
                f"collection {name!r} should hold its token vectors in the Array-of-Structs field "
                f"{F.STRUCT!r}, but the server reports no such field"
            )
        if layout == "tokens" and not self._call(self._client.has_collection, name + TOKENS_SUFFIX):
            raise SchemaMismatchError(
                f"collection {name!r} has lost its token collection {name + TOKENS_SUFFIX!r}; drop and re-index it"
            )
        self._layouts[name] = layout
        return schema

    def _property(self, schema: CollectionSchema, layout: str) -> str:
        return json.dumps(
            {"schema": schema.to_json(), "layout": layout, "format": LAYOUT_FORMAT, "token_bits": TOKEN_BITS},
            separators=(",", ":"),
        )

    def _create(self, schema: CollectionSchema) -> None:
        name = schema.name
        if name.endswith(TOKENS_SUFFIX):
            raise InvalidSchemaError(
                f"collection names ending in {TOKENS_SUFFIX!r} are reserved for Milvus token collections: {name!r}"
            )
        if schema.dim > MAX_DIM:
            raise InvalidSchemaError(f"Milvus vector fields hold at most {MAX_DIM} dims; got dim={schema.dim}")
        layout = self._layout
        tokens_name = name + TOKENS_SUFFIX
        if self._call(self._client.has_collection, tokens_name):
            self._call(self._client.drop_collection, tokens_name)  # leftover of an interrupted drop
        created: list[str] = []
        try:
            created.append(name)  # dropped again if anything below fails
            self._create_passages(schema, layout)
            if layout == "tokens":
                self._create_tokens(schema)
                created.append(tokens_name)
            self._layouts[name] = layout
            self._ensure_loaded(created)
        except BaseException:
            for n in reversed(created):
                try:
                    if self._client.has_collection(n):
                        self._client.drop_collection(n)
                except Exception:
                    pass
                self._loaded.discard(n)
            self._layouts.pop(name, None)
            raise

    def _create_passages(self, schema: CollectionSchema, layout: str) -> None:
        s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field(F.ID, DataType.VARCHAR, is_primary=True, max_length=36)
        s.add_field(F.PNUM, DataType.INT64)
        s.add_field(F.BASE, DataType.INT64)
        s.add_field(F.NTOK, DataType.INT64)
        s.add_field(F.DOC, DataType.VARCHAR, max_length=MAX_VARCHAR)
        s.add_field(F.INDEX, DataType.INT64)
        s.add_field(F.TEXT, DataType.VARCHAR, max_length=MAX_VARCHAR)
        s.add_field(F.UNITS, DataType.VARCHAR, max_length=MAX_VARCHAR)
        s.add_field(F.META, DataType.JSON)
        s.add_field(F.FX, DataType.JSON)
        s.add_field(F.VERSION, DataType.INT64)
        s.add_field(F.POOLED, DataType.FLOAT_VECTOR, dim=schema.dim)
        if schema.lexical is not None:
            s.add_field(F.TERMS, DataType.ARRAY, element_type=DataType.INT64, max_capacity=MAX_TERMS)
            s.add_field(F.NTERMS, DataType.INT64)
            s.add_field(F.LEX, DataType.SPARSE_FLOAT_VECTOR)
        if layout == "struct":
            st = MilvusClient.create_struct_field_schema()
            st.add_field(F.SVEC, DataType.FLOAT_VECTOR, dim=schema.dim)
            s.add_field(
                F.STRUCT, DataType.ARRAY, element_type=DataType.STRUCT, struct_schema=st, max_capacity=STRUCT_MAX_TOKENS
            )
        self._call(
            self._client.create_collection,
            schema.name,
            schema=s,
            consistency_level="Strong" if self._lite else self._consistency,
            **self._shards,
            properties={PROPERTY: self._property(schema, layout)},
        )
        desc = self._call(self._client.describe_collection, schema.name)
        if schema.lexical is not None and not _has_lexical_fields(desc):
            raise UnsupportedOperationError(
                f"{self.engine} {self.server_version} at {self._where} dropped the lexical fields "
                f"{F.LEX!r}, {F.TERMS!r} and {F.NTERMS!r} when creating {schema.name!r} (read back from its "
                "schema); create it with lexical=None (agrame-vdb index --no-lexical)"
            )
        if layout == "struct" and not _has_struct_field(desc):
            raise UnsupportedOperationError(
                f"{self.engine} {self.server_version} at {self._where} dropped the Array-of-Structs field "
                f"{F.STRUCT!r} when creating {schema.name!r} (read back from its schema): the struct layout "
                "with MAX_SIM needs a Milvus server >= 2.6.4; use layout=tokens here"
            )
        ip = self._client.prepare_index_params()
        ip.add_index(F.POOLED, **_vector_index(self._pooled_index, "COSINE"))
        if layout == "struct":
            ip.add_index(
                F.STRUCT_ANNS,
                index_name="tokens_maxsim",
                index_type="HNSW",
                metric_type="MAX_SIM_IP",
                params={"M": 16, "efConstruction": 200},
            )
        if schema.lexical is not None:
            ip.add_index(F.LEX, **sparse_index())
            if not self._lite and self._version >= (2, 5, 0):  # Lite indexes no ARRAY field
                ip.add_index(F.TERMS, index_type="INVERTED")
            self._add_scalar_index(ip, F.NTERMS, "int")
        self._add_scalar_index(ip, F.PNUM, "int")
        self._add_scalar_index(ip, F.DOC, "str")
        self._call(self._client.create_index, schema.name, ip, sync=False)
        if self._lite:
            self._call(self._client.release_collection, schema.name)

    def _create_tokens(self, schema: CollectionSchema) -> None:
        name = schema.name + TOKENS_SUFFIX
        s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field(TOK.PK, DataType.INT64, is_primary=True)
        s.add_field(TOK.PNUM, DataType.INT64)
        s.add_field(TOK.VEC, DataType.FLOAT_VECTOR, dim=schema.dim)
        self._call(
            self._client.create_collection,
            name,
            schema=s,
            consistency_level="Strong" if self._lite else self._consistency,
            **self._shards,
            properties={PROPERTY: json.dumps({"role": "tokens", "of": schema.name})},
        )
        ip = self._client.prepare_index_params()
        ip.add_index(TOK.VEC, **_vector_index(self._token_index, "IP"))
        self._add_scalar_index(ip, TOK.PNUM, "int")
        self._call(self._client.create_index, name, ip, sync=False)
        if self._lite:
            self._call(self._client.release_collection, name)

    def _add_scalar_index(self, ip: Any, field: str, kind: str) -> None:
        if self._lite or self._version >= (2, 4, 0):
            ip.add_index(field, index_type="INVERTED")
        elif kind == "int":
            ip.add_index(field, index_type="STL_SORT")  # Milvus 2.3 has no INVERTED index

    def _add_indexes(self, schema: CollectionSchema, new_fields: dict[str, str]) -> None:
        # Filters read the filter document ``fx``; the indexed fields are recorded in the schema.
        self._call(
            self._client.alter_collection_properties,
            schema.name,
            properties={PROPERTY: self._property(schema, self._layout_of(schema))},
        )

    # ----- aliases: Milvus's own, on the passages collection only. The base class
    # resolves an alias to the agrame collection before any hook runs, and the token
    # collection is always ``<collection>__tokens``, so one ``alter_alias`` switches both.

    def _aliases(self) -> dict[str, str]:
        """Every alias of an agrame collection. Names ending in ``__tokens`` are reserved
        and an alias on a token collection stands for no agrame collection: such
        aliases (made with pymilvus directly) are not listed."""
        names = (self._call(self._client.list_aliases) or {}).get("aliases", [])
        out = {}
        for alias in names:
            if alias.endswith(TOKENS_SUFFIX):
                continue
            target = self._call(self._client.describe_alias, alias)["collection_name"]
            if not target.endswith(TOKENS_SUFFIX):
                out[alias] = target
        return out

    def _set_alias(self, alias: str, collection: str, previous: str | None) -> None:
        if alias.endswith(TOKENS_SUFFIX):
            raise InvalidSchemaError(f"alias names ending in {TOKENS_SUFFIX!r} are reserved: {alias!r}")
        if previous is None:
            self._call(self._client.create_alias, collection, alias)
        else:
            self._call(self._client.alter_alias, collection, alias)  # atomic: old target or new

    def _delete_alias(self, alias: str) -> None:
        self._call(self._client.drop_alias, alias)

    def _list_collections(self) -> list[str]:
        return [n for n in self._call(self._client.list_collections) if not n.endswith(TOKENS_SUFFIX)]

    def _drop(self, name: str) -> bool:
        existed = self._call(self._client.has_collection, name)
        if existed:
            self._call(self._client.drop_collection, name)
        if self._call(self._client.has_collection, name + TOKENS_SUFFIX):
            self._call(self._client.drop_collection, name + TOKENS_SUFFIX)
        self._loaded.discard(name)
        self._loaded.discard(name + TOKENS_SUFFIX)
        self._layouts.pop(name, None)
        return bool(existed)
