"""Math datasets in verl's parquet schema: `python -m lambda_grpo.data prepare ...` (see `__main__`).

Modules: `specs` (declared field mapping per dataset, the evaluation suite), `sources` (reading local files or a
hub copy), `rows` (mapping to verl's schema, parquet writing), `overlap` (train/eval overlap), `prepare` (all of
it, with a report).
"""
