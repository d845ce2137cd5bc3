//! Retrieval evaluation ("A Metric Learning Reality Check").
