"""The Batch API: files, batch records, and the worker that turns a batch's lines into jobs."""
