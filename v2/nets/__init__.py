"""The networks: layers, resnet (units and the ResNet class), vgg, model (ModelConfig, build)."""
