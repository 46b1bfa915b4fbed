"""Cloud side: data, the YOLOv4 family, training, compression, export, the Ray pipeline."""
